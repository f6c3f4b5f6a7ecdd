"""`minitron run RECIPE.yaml`: score → prune → distill → eval from one file, resumable, into one tree.

Each stage is the stage's own command, called in-process with the recipe's options (so a recipe key
is exactly a CLI flag, checked by the command's own parser and validation). The whole recipe is
checked before the first stage starts: keys and types against each command, data files, the links
between stages, and prune's target (a dry run on the model's config). `<out>/run.json` records the
options each finished stage ran with; running the recipe again skips those stages (and refuses if
their options changed), and a distillation that was interrupted resumes inside its run directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import JsonOpt, command, emit_json, info, state, stdout
from minitron.errors import InputError, MinitronError
from minitron.recipe import Recipe, check_links, load, stage_dir

RUN_FILE = "run.json"


@command
def command(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML), or the name of a bundled recipe (demo).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output tree (default: the recipe's `out`).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the whole recipe, print the stages' commands, run nothing.")] = False,
    json_out: JsonOpt = False,
):
    """Run a recipe: score → prune → distill → eval with the options of one YAML file.

    Every key of a stage is that stage's CLI flag without `--` (see `minitron <stage> --help`); the run
    links the stages (scores → prune → distill → eval) into one output tree: <out>/scores, pruned,
    distilled, eval, with run.json. The whole recipe is validated before anything runs. Running it
    again resumes: finished stages are kept, an interrupted distillation continues where it stopped.

    Examples:

      minitron run examples/demo.yaml

      minitron run examples/nemotron-nano-12b-to-9b-a10g.yaml --check

      minitron run my-recipe.yaml --out runs/try2 --json
    """
    r = load(recipe, out=out)
    check_links(r)
    plan = {stage: stage_argv(r, stage) for stage in r.stages}
    validate(r, plan)
    if check:
        doc = {"recipe": str(r.path), "out": str(r.out), "stages": {s: ["minitron", s, *a] for s, a in plan.items()}}
        if json_out:
            emit_json(doc)
        else:
            for argv in doc["stages"].values():
                stdout().print(" ".join(argv), markup=False)
            info("recipe checked: nothing run")
        return
    doc = execute(r, plan)
    if json_out:
        emit_json(doc)
    else:
        render(doc)


# ------------------------------------------------------------------------------------------ argv
def _cmd(stage: str):
    from typer.main import get_command

    from minitron.cli.main import app

    return get_command(app).commands[stage]


def _params(stage: str) -> dict:
    """`--flag` -> (click parameter, secondary) of a stage's command."""
    out = {}
    for p in _cmd(stage).params:
        for o in getattr(p, "opts", []):
            out[o] = (p, False)
        for o in getattr(p, "secondary_opts", []):
            out[o] = (p, True)
    return out


def _is_path(param) -> bool:
    return "Path" in str(param.type_descriptor.annotation)


def _value(r: Recipe, param, v) -> str:
    if _is_path(param) and isinstance(v, str) and not os.path.isabs(v):
        return str(r.base / v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def stage_argv(r: Recipe, stage: str) -> list[str]:
    """The stage's command line: the run's links, then the recipe's options, then --json."""
    opts = r.stages[stage]
    model = r.model if r.revision is None else f"{r.model}@{r.revision}"
    written = {s for s in r.stages if not (s == "prune" and r.stages["prune"].get("dry-run"))}
    links = {
        "score": [model, "--out", str(stage_dir(r, "score"))],
        "prune": [model, *(["--scores", str(stage_dir(r, "score"))] if "score" in r.stages else []),
                  *([] if opts.get("dry-run") else ["--out", str(stage_dir(r, "prune"))])],
        "distill": ["--teacher", model, "--student", str(stage_dir(r, "prune")), "--out", str(stage_dir(r, "distill"))],
        "eval": [model, *[str(stage_dir(r, s)) for s in ("prune", "distill") if s in written],
                 *(["--teacher", model] if "data" in opts and written & {"prune", "distill"} else []),
                 "--out", str(stage_dir(r, "eval"))],
    }[stage]  # fmt: skip
    params, argv = _params(stage), list(links)
    for key, v in opts.items():
        flag = f"--{key}"
        if flag not in params or params[flag][0].hidden:
            raise InputError(f"unknown key: minitron {stage} has no {flag}", flag=f"{stage}.{key}")
        param, secondary = params[flag]
        if param.is_flag:
            if not isinstance(v, bool):
                raise InputError(f"is a switch: true or false, got {v!r}", flag=f"{stage}.{key}")
            if v:
                argv.append(flag)
            elif param.secondary_opts and not secondary:
                argv.append(param.secondary_opts[0])
            continue
        values = v if isinstance(v, list) else [v]
        if len(values) != 1 and not param.multiple:
            raise InputError(f"takes one value, got a list of {len(values)}", flag=f"{stage}.{key}")
        if isinstance(v, dict) or any(isinstance(x, (dict, list)) for x in values):
            raise InputError("takes a value or a list of values, not a mapping", flag=f"{stage}.{key}")
        for x in values:
            argv += [flag, _value(r, param, x)]
    return argv + ["--json"]


# ------------------------------------------------------------------------------------------ checks
def _restage(stage: str, err: MinitronError) -> MinitronError:
    """An error of a stage's command, named by the recipe key (`prune.target-params: ...`)."""
    key = (err.flag or "").lstrip("-")
    new = type(err)(err.message, flag=f"{stage}.{key}" if key else stage)
    return new


def validate(r: Recipe, plan: dict) -> None:
    from typer._click.exceptions import UsageError

    for stage, argv in plan.items():
        try:
            _cmd(stage).make_context(stage, list(argv))
        except UsageError as e:
            m = re.search(r"'--([\w-]+)'", e.format_message())
            raise InputError(e.format_message(), flag=f"{stage}.{m.group(1)}" if m else stage) from None
        for key, v in r.stages[stage].items():
            param = _params(stage)[f"--{key}"][0]
            if _is_path(param):
                for x in v if isinstance(v, list) else [v]:
                    if not Path(_value(r, param, x)).exists():
                        raise InputError(f"no such file or directory: {x}", flag=f"{stage}.{key}")
    if "prune" in plan:  # the target, the shape and the search space against the model's config
        drop = {"--out", "--scores", "--data", "--iterative", "--candidate-distill-steps"}
        argv, skip = [], False
        for a in plan["prune"]:
            if skip:
                skip = False
            elif a in drop:
                skip = a not in ("--iterative",)
            else:
                argv.append(a)
        try:
            invoke("prune", [*argv, "--dry-run"])
        except MinitronError as e:
            if e.flag not in ("--scores", "--data"):  # those come from the stages before
                raise _restage("prune", e) from None


# ------------------------------------------------------------------------------------------ running
def invoke(stage: str, argv: list[str]) -> dict:
    """Run one stage's command in-process; its JSON document. Errors propagate (not printed)."""
    cmd = _cmd(stage)
    buf = io.StringIO()
    raising, as_json = state.raise_errors, state.json
    state.raise_errors = True
    try:
        with contextlib.redirect_stdout(buf):
            cmd.invoke(cmd.make_context(stage, list(argv)))
    finally:
        state.raise_errors, state.json = raising, as_json
    return json.loads(buf.getvalue())


def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"stages": {}}


def execute(r: Recipe, plan: dict) -> dict:
    from minitron.io import atomic_write_text, check_output_dir, write_provenance

    check_output_dir(r.out, overwrite=True)  # validated and locked for the whole run
    r.out.mkdir(parents=True, exist_ok=True)
    run_file = r.out / RUN_FILE
    run_state = _load_state(run_file)
    t0, result = time.perf_counter(), {}
    for i, (stage, argv) in enumerate(plan.items(), 1):
        done = run_state["stages"].get(stage)
        if done is not None and done["argv"] == argv and (stage_dir(r, stage) / "minitron.json").is_file():
            info(f"[{i}/{len(plan)}] {stage}: done in an earlier run, kept ({stage_dir(r, stage)})")
            result[stage] = {**done, "skipped": True}
            continue
        if done is not None and done["argv"] != argv:
            raise InputError(f"the recipe's {stage} options changed since that stage ran in {r.out}; run into "
                             "another --out (or delete it)", flag=stage)  # fmt: skip
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
    summary = {"recipe": str(r.path), "out": str(r.out), "seconds": round(time.perf_counter() - t0, 1),
               "stages": result}  # fmt: skip
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


def render(doc: dict) -> None:
    out = stdout()
    ev = (doc["stages"].get("eval") or {}).get("doc")
    if ev:
        from minitron.evaluate.table import render as render_table

        render_table(ev, out)
    for stage, e in doc["stages"].items():
        how = "kept from an earlier run" if e["skipped"] else f"{e['seconds']:.0f} s"
        out.print(f"  {stage:<8} {how}")
    out.print(f"run finished in {doc['seconds']:.0f} s: {doc['out']}")
