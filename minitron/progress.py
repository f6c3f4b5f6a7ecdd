"""The progress protocol: `progress(stage, done, total)`, and `log(message)` beside it.

Every long loop of a component or a recipe reports through one callable of this shape: `stage`
names the loop (`score`, `proxy`, `distill`, `prune`, `eval`, a cache split), `done` and `total`
count its units, and None means nobody is listening. The CLI passes its one display
(`minitron.cli.progress.Progress.update`, which knows each stage's unit); a library caller passes
anything with that signature. Distillation's live events (`run_distill(on_event=...)`) are a
separate stream: they carry metrics, not a count.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]


def report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def counter(progress: ProgressFn | None, stage: str, total: int) -> Callable[[int], None]:
    """`add(n)`: report `n` more units of `stage` done (for loops that count in batches)."""
    done = 0

    def add(n: int) -> None:
        nonlocal done
        done += n
        report(progress, stage, done, total)

    return add
