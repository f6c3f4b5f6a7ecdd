"""`minitron run`'s stages: each stage's command line from the recipe, the checks before the run, and
calling a stage's own Typer command in-process (so a recipe key is exactly a CLI flag, checked by the
command's own parser and validation)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

from minitron.cli.common import state
from minitron.errors import InputError, MinitronError
from minitron.recipe import Recipe, stage_dir


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


def validate(r: Recipe, plan: dict, *, require_inputs: bool = True) -> dict:
    """Check every stage's options with its own parser, the files they name, prune's target (a dry run
    on the config) and, when distill has a budget, its memory plan on the shape the dry run picks.

    Returns what the checks computed: `{"missing": [...], "stages": {stage: {...}}}`; with
    `require_inputs=False` a file that does not exist is listed in `missing` instead of refused.
    """
    from typer._click.exceptions import UsageError

    missing, stages = [], {}
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
                    path = _value(r, param, x).split(":")[0] if key in ("data", "eval-data") else _value(r, param, x)
                    if Path(path).exists() or Path(_value(r, param, x)).exists():
                        continue
                    if require_inputs:
                        raise InputError(f"no such file or directory: {x}", flag=f"{stage}.{key}")
                    missing.append({"key": f"{stage}.{key}", "path": path})
    for stage in plan:
        if stage in ("score", "eval"):
            stages[stage] = {"skipped": f"{stage} reads the model's weights and its data"}
    if "prune" in plan:  # the target, the shape and the search space against the model's config
        # --scores and --data come from the stages before; so does a layer choice that needs the scores
        prune_doc = invoke_checked("prune", [*_without(plan["prune"], DRY_DROP), "--dry-run"],
                                   ignore=("--scores", "--data"), needs_scores="score" in plan)
        config = prune_doc.pop("config", None) if prune_doc else None
        stages["prune"] = {"doc": prune_doc}
        if "distill" in plan and config is not None:
            stages["distill"] = {"doc": _distill_plan(plan["distill"], config)}
    return {"missing": missing, "stages": {s: stages[s] for s in plan if s in stages}}


DRY_DROP = {"--out": 1, "--scores": 1, "--data": 1, "--iterative": 0, "--candidate-distill-steps": 1, "--overwrite": 0}


def _without(argv: list[str], drop: dict[str, int]) -> list[str]:
    """`argv` less the options in `drop` (option -> how many values follow it)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
        elif a in drop:
            skip = drop[a]
        else:
            out.append(a)
    return out


def invoke_checked(stage: str, argv: list[str], ignore=(), needs_scores: bool = False) -> dict | None:
    """`invoke`, with a stage's error named by its recipe key. None (not checked) for errors of the
    `ignore` flags, and with `needs_scores` for those that only say the layer scores are missing."""
    try:
        return invoke(stage, argv)
    except MinitronError as e:
        if e.flag in ignore or (needs_scores and "scores of --scores" in e.message):
            return None
        raise _restage(stage, e) from None


def _distill_plan(argv: list[str], config: dict) -> dict | None:
    """distill --dry-run with the student the prune dry run describes (its config.json in a temporary
    directory): the memory plan, and exit 3 now, not after pruning, when a budget cannot be met."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="minitron-student-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        args, i = list(argv), argv.index("--student")
        args[i + 1] = tmp
        return invoke_checked("distill", [*args, "--dry-run"])


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
