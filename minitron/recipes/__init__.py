"""Recipes: one per verb. The only code that loads models, reads data, writes directories and provenance.

Each takes its options object, composes the components (`minitron.models`, `minitron.families`,
`minitron.importance`, `minitron.prune`, `minitron.distill`, `minitron.evaluate`, `minitron.memory`) and
returns a plain dict (the verb's `--json` document); `minitron.cli` turns Typer options into the
options object and renders the result. See docs/architecture.md.
"""
