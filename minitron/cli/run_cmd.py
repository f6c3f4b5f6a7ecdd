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
        from minitron.evaluate.table import render as render_table

        render_table(ev, out)
    for stage, e in doc["stages"].items():
        how = "kept from an earlier run" if e["skipped"] else f"{e['seconds']:.0f} s"
        out.print(f"  {stage:<8} {how}")
    out.print(f"run finished in {doc['seconds']:.0f} s: {doc['out']}")
    if doc.get("publish"):
        out.print(f"publish the result: {doc['publish']}", markup=False)
