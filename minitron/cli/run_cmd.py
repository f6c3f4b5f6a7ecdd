"""`minitron run RECIPE.yaml`: score → prune → distill → eval from one file, resumable, into one tree.

Each stage is the stage's own command, called in-process with the recipe's options (so a recipe key
is exactly a CLI flag, checked by the command's own parser and validation). The whole recipe is
checked before the first stage starts: keys and types against each command, data files, the links
between stages, and prune's target (a dry run on the model's config). `<out>/run.json` records the
options each finished stage ran with; running the recipe again skips those stages (and refuses if
their options changed), and a distillation that was interrupted resumes inside its run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import JsonOpt, command, emit_json, info, stdout
from minitron.cli.run_stages import _restage, _without, invoke, stage_argv, validate  # noqa: F401
from minitron.errors import InputError, MinitronError
from minitron.recipe import Recipe, check_links, load, stage_dir

RUN_FILE = "run.json"


@command
def command(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML), or the name of a bundled recipe (demo).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output tree (default: the recipe's `out`).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the whole recipe, print the stages' commands, run nothing.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, then run what needs no weights: prune --dry-run on the model's config and "
                                          "distill --dry-run (the memory plan) on the shape it picks. Data files that do not exist yet are listed, not refused.")] = False,
    until: Annotated[str | None, typer.Option("--until", help="Run the stages up to this one (score, prune, distill) and stop; "
                                              "a later `minitron run` goes on from there.")] = None,
    json_out: JsonOpt = False,
):
    """Run a recipe: score → prune → distill → eval with the options of one YAML file.

    Every key of a stage is that stage's CLI flag without `--` (see `minitron <stage> --help`); the run
    links the stages (scores → prune → distill → eval) into one output tree: <out>/scores, pruned,
    distilled, eval, with run.json. The whole recipe is validated before anything runs. Running it
    again resumes: finished stages are kept, an interrupted distillation continues where it stopped.

    Examples:

      minitron run examples/demo.yaml

      minitron run examples/nemotron-nano-12b-to-9b-a10g.yaml --dry-run

      minitron run examples/llama-3.1-8b-to-4b-width.yaml --check

      minitron run my-recipe.yaml --out runs/try2 --json
    """
    if check and dry_run:
        raise InputError("--check and --dry-run are two ways of not running; give one", flag="--dry-run")
    r = load(recipe, out=out)
    check_links(r)
    if until is not None and until not in r.stages:
        raise InputError(f"{until!r} is not a stage of this recipe ({', '.join(r.stages)})", flag="--until")
    plan = {stage: stage_argv(r, stage) for stage in r.stages}
    checked = validate(r, plan, require_inputs=not dry_run)
    if dry_run:
        doc = {"recipe": str(r.path), "out": str(r.out), "dry_run": True, **checked}
        if json_out:
            emit_json(doc)
        else:
            render_dry_run(doc)
        return
    if check:
        doc = {"recipe": str(r.path), "out": str(r.out),
               "stages": {s: ["minitron", s, *_without(a, {"--json": 0})] for s, a in plan.items()}}
        if json_out:
            emit_json(doc)
        else:
            for argv in doc["stages"].values():
                stdout().print(" ".join(argv), markup=False)
            info("recipe checked: nothing run")
        return
    doc = execute(r, plan, until=until)
    if json_out:
        emit_json(doc)
    else:
        render(doc)


# ------------------------------------------------------------------------------------------ argv
def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"stages": {}}


def load_state(out: Path) -> dict:
    """`<out>/run.json` of an earlier run (`{"recipe", "stages": {stage: {"argv", "seconds", "doc"}}}`)."""
    return _load_state(out / RUN_FILE)


def adopted(r: Recipe, stage: str, argv: list[str]) -> dict | None:
    """A stage run by hand with exactly the command `run --check` prints (say distill under torchrun):
    its output directory's `minitron.json` records that command line; the run takes the result."""
    try:
        prov = json.loads((stage_dir(r, stage) / "minitron.json").read_text())
    except (OSError, ValueError):
        return None
    ran = prov.get("argv") or []
    if prov.get("command") != stage or stage not in ran:
        return None
    ran = ran[ran.index(stage) + 1:]
    if _without(ran, {"--json": 0}) != _without(argv, {"--json": 0}):
        return None
    return {"argv": argv, "seconds": 0.0, "doc": prov.get("result") or {}, "adopted": True}


def execute(r: Recipe, plan: dict, *, announce=None, until: str | None = None) -> dict:
    """Run the stages in order into `r.out`, skipping those an earlier run finished with the same
    options (or that were run by hand with the stage's exact command), up to `until` if given.
    `announce(i, n, stage)` prints the heading of a stage about to run (default `[i/n] stage`)."""
    from minitron.io import atomic_write_text, check_output_dir, write_provenance

    writes = any(not (s == "prune" and "--dry-run" in a) for s, a in plan.items())  # else: a dry run, no tree
    if writes:
        check_output_dir(r.out, overwrite=True)  # validated and locked for the whole run
        r.out.mkdir(parents=True, exist_ok=True)
    run_file = r.out / RUN_FILE
    run_state = _load_state(run_file)
    run_state["recipe"] = str(r.path)
    t0, result = time.perf_counter(), {}
    stages = list(plan.items())
    if until is not None:
        stages = stages[: list(plan).index(until) + 1]
    for i, (stage, argv) in enumerate(stages, 1):
        done = run_state["stages"].get(stage)
        if done is not None and done["argv"] == argv and (stage_dir(r, stage) / "minitron.json").is_file():
            info(f"[{i}/{len(plan)}] {stage}: done in an earlier run, kept ({stage_dir(r, stage)})")
            result[stage] = {**done, "skipped": True}
            continue
        if done is None and (done := adopted(r, stage, argv)) is not None:
            info(f"[{i}/{len(plan)}] {stage}: run by hand with this recipe's command, taken ({stage_dir(r, stage)})")
            run_state["stages"][stage] = done
            atomic_write_text(run_file, json.dumps(run_state, indent=2) + "\n")
            result[stage] = {**done, "skipped": True}
            continue
        if done is not None and done["argv"] != argv:
            raise InputError(f"the recipe's {stage} options changed since that stage ran in {r.out}; run into "
                             "another --out (or delete it)", flag=stage)  # fmt: skip
        if announce is not None:
            announce(i, len(plan), stage)
        else:
            info(f"[{i}/{len(plan)}] {stage}")
        t = time.perf_counter()
        try:
            doc = invoke(stage, argv)
        except MinitronError as e:
            raise _restage(stage, e) from None
        entry = {"argv": argv, "seconds": round(time.perf_counter() - t, 1), "doc": doc}
        if not (stage == "prune" and "--dry-run" in argv):
            run_state["stages"][stage] = entry
            atomic_write_text(run_file, json.dumps(run_state, indent=2) + "\n")
        if stage == "eval":
            _cards_get_figures(doc)
        result[stage] = {**entry, "skipped": False}
    final = next((stage_dir(r, s) for s in ("distill", "prune") if s in result and "--dry-run" not in plan[s]), None)
    summary = {"recipe": str(r.path), "out": str(r.out), "seconds": round(time.perf_counter() - t0, 1),
               "stages": result, "until": until, "model": str(final) if final else None,
               "publish": publish_line(final) if final else None}  # fmt: skip
    if not writes:
        return summary
    from minitron import card

    card.write(r.out, card.for_run(r, summary))
    write_provenance(r.out, "run", {"recipe": str(r.path), "out": str(r.out)}, inputs={"model": r.model},
                     result={s: {k: v for k, v in e.items() if k != "doc"} for s, e in result.items()})  # fmt: skip
    return summary


def _cards_get_figures(eval_doc: dict) -> None:
    """The pruned and distilled models' cards get the figures eval measured on them."""
    from minitron import card

    for row in eval_doc["models"][1:]:
        figures = {"loss (nats)": row.get("loss"), "perplexity": row.get("perplexity"), "KL to teacher": row.get("kl")}
        for task, metrics in (row.get("tasks") or {}).items():
            figures.update({f"{task} {m}": v for m, v in metrics.items() if not m.endswith("stderr")})
        card.add_figures(row["path"], figures, heading="Evaluation (minitron eval)")


def publish_line(model_dir: Path) -> str:
    """The command that publishes a result (`hf`, huggingface_hub's CLI: login, large folders, resumable)."""
    import shlex

    return f"hf upload <your-org>/{model_dir.resolve().parent.name}-{model_dir.name} {shlex.quote(str(model_dir))}"


def render_dry_run(doc: dict) -> None:
    from minitron.fmt import fmt_bytes

    out = stdout()
    for stage, e in doc["stages"].items():
        d = e.get("doc")
        if d is None:
            out.print(f"  {stage:<8} {e.get('skipped', 'not checked (needs an earlier stage)')}", markup=False)
        elif stage == "prune":
            shape = ", ".join(f"{k} {v}" for k, v in d["plan"].items() if k in SHAPE_KEYS and v)
            fit = ""
            if d.get("budget"):
                b = d["budget"]
                fit = f"; {fmt_bytes(d['memory']['total_bytes'])} of a {fmt_bytes(b['budget_bytes'])} budget"
            listed = f" ({len(d['candidates'])} candidates listed)" if d.get("candidates") else ""
            out.print(f"  prune    {d['params_before']:,} -> {d['params_after']:,} parameters: {shape}{fit}{listed}",
                      markup=False)  # fmt: skip
        elif stage == "distill":
            a = d["asked"]
            verdict = "" if d.get("fits") is None else (" - fits the budget" if d["fits"] else " - does NOT fit")
            out.print(f"  distill  {fmt_bytes(a['total'])} per device on {a['devices']} device(s)"
                      f"{' with FSDP2' if a['fsdp'] else ''}{verdict}", markup=False)  # fmt: skip
    for m in doc["missing"]:
        out.print(f"  needed for the real run: {m['key']} {m['path']} (does not exist yet)", markup=False)
    info("dry run: nothing written")


SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_size", "mamba_heads", "attention_heads", "kv_heads")


def render(doc: dict) -> None:
    out = stdout()
    ev = (doc["stages"].get("eval") or {}).get("doc")
    if ev:
        from minitron.cli.eval_table import render as render_table

        render_table(ev, out)
    for stage, e in doc["stages"].items():
        how = "kept from an earlier run" if e["skipped"] else f"{e['seconds']:.0f} s"
        out.print(f"  {stage:<8} {how}")
    out.print(f"run finished in {doc['seconds']:.0f} s: {doc['out']}")
    if doc.get("publish"):
        out.print(f"publish the result: {doc['publish']}", markup=False)
