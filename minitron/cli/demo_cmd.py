"""`minitron demo`: the whole Minitron pipeline on a bundled teacher, offline, in a few minutes.

The demo is a bundled recipe run by `minitron run`'s engine: score -> prune -> distill -> eval, each
stage its own command with the recipe's options. `--teacher hybrid` (the default) is
`minitron/assets/recipes/demo.yaml` (also `examples/demo.yaml`): the Mamba-2/MLP/attention teacher
pruned under a memory budget. `--teacher moe` is `demo-moe.yaml`: the MoE teacher with half its
routed experts dropped (REAP scores) and every kept expert narrowed. The demo adds what a first look
needs: the budget as a fraction of the teacher's memory (`--budget-fraction`, which sets the recipe's
`prune.memory-budget`; hybrid only), the steps (`distill.steps`), and one table of teacher, pruned and
distilled model.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import JsonOpt, OverwriteOpt, command, emit_json, fmt_bytes, fmt_params, info, stdout
from minitron.errors import InputError, MinitronError

RUNS_WITHOUT_ARGS = True  # the README's first command is plain `minitron demo`

RECIPES = {"hybrid": "demo", "moe": "demo-moe"}  # --teacher -> the bundled recipe the demo runs
TEACHERS = {"hybrid": "teacher", "moe": "moe-teacher"}  # --teacher -> its directory under assets/demo
DEFAULT_BUDGET_FRACTION = 0.5
CONTEXT = 1024  # context length of the memory model that sets the budget (the recipe's prune.context-length)
HEADINGS = {
    "score": "score: activation importance of every width unit and KL when each layer is skipped (16 x 256 tokens)",
    "prune": "prune: search shapes under the budget, rank those near it by KL to the teacher, prune the best",
    "prune-moe": "prune: keep the 8 of 16 routed experts with the highest REAP score in every MoE layer, "
                 "48 of 64 neurons in each",
    "distill": "distill: forward KL to the teacher's logits and its stream after each kept layer (8 x 256 tokens a step)",
    "eval": "eval: loss, perplexity and KL on 16 held-out blocks, a 60-item cloze task from the held-out text, "
            "memory, decode speed",
}


def demo_paths(teacher: str = "hybrid") -> tuple[Path, Path, Path]:
    """(teacher dir, train.txt, heldout.txt) of the bundled demo assets."""
    from minitron.assets import ASSETS

    demo = ASSETS / "demo"
    return demo / TEACHERS[teacher], demo / "corpus" / "train.txt", demo / "corpus" / "heldout.txt"


@command
def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the scores and the pruned and distilled models "
                                      "(default: ./minitron-demo, replaced if an earlier demo made it).")] = Path("minitron-demo"),
    steps: Annotated[int, typer.Option("--steps", help="Distillation steps (8 x 256 tokens each).")] = 40,
    budget_fraction: Annotated[
        float | None, typer.Option("--budget-fraction", help="Memory budget as a fraction of the teacher's (bf16, "
                                   "1024 tokens; default 0.5). --teacher hybrid only.")
    ] = None,
    teacher_name: Annotated[str, typer.Option(
        "--teacher", help="Which bundled teacher: hybrid (Mamba-2 + MLP + attention, pruned under a memory budget) "
        "or moe (Mamba-2 + MoE + attention, 16 routed experts: half of them dropped by REAP score, 48 of 64 "
        "neurons kept in each; default --out ./minitron-demo-moe).")] = "hybrid",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
):
    """Run inspect -> score -> prune -> distill -> eval on a bundled teacher.

    The default teacher is a 4.6M-parameter Nemotron-H (Mamba-2, MLP and attention layers) trained on
    the Python documentation and shipped inside minitron, with a slice of that text. The budget forces
    a model about half the size; the pruned model is then distilled from the teacher and the three are
    compared (parameters, memory, loss, perplexity, KL to the teacher, a local cloze task, decode speed).
    `--teacher moe` runs the same pipeline on the bundled MoE teacher (2.3M parameters, 1.7M active;
    three MoE layers of 16 routed experts, top-2, and a shared expert): the score stage ranks the experts
    by router-weighted output norm (REAP), the prune stage keeps half of them and narrows each.
    Offline, a few minutes on a laptop CPU.

    Examples:

      minitron demo

      minitron demo --out /tmp/demo --steps 200 --overwrite

      minitron demo --budget-fraction 0.4 --json

      minitron demo --teacher moe
    """
    from minitron.cli.run_cmd import execute, load_state, stage_argv, validate
    from minitron.io import check_output_dir, write_provenance
    from minitron.recipe import check_links, load

    if teacher_name not in RECIPES:
        raise InputError(f"must be one of {', '.join(RECIPES)}, got {teacher_name!r}", flag="--teacher")
    if steps < 1:
        raise InputError(f"must be >= 1, got {steps}", flag="--steps")
    moe = teacher_name == "moe"
    if moe and budget_fraction is not None:
        raise InputError("the moe demo prunes an explicit shape (half the experts); the budget applies to "
                         "--teacher hybrid", flag="--budget-fraction")
    if budget_fraction is None:
        budget_fraction = DEFAULT_BUDGET_FRACTION
    if not 0.1 <= budget_fraction < 1.0:
        raise InputError(f"must be in [0.1, 1), got {budget_fraction}", flag="--budget-fraction")
    recipe_name = RECIPES[teacher_name]
    if moe and out == Path("minitron-demo"):
        out = Path("minitron-demo-moe")  # the default output of each demo is its own
    teacher, train, heldout = demo_paths(teacher_name)
    for p in (teacher / "config.json", train, heldout):
        if not p.is_file():
            raise MinitronError(f"the bundled demo asset {p} is missing (a broken install?)")
    t0 = time.perf_counter()
    arch_doc, budget_bytes = _inspect(teacher, None if moe else budget_fraction)
    r = load(recipe_name, out=out)
    if not moe:
        r.stages["prune"]["memory-budget"] = f"{budget_bytes}B"
    r.stages["distill"].update({"steps": steps, "warmup-steps": max(1, steps // 10)})
    check_links(r)
    plan = {stage: stage_argv(r, stage) for stage in r.stages}
    earlier = _earlier_demo(out, recipe_name)
    check_output_dir(out, overwrite=overwrite or earlier is not None, inputs=[teacher])
    validate(r, plan)
    if earlier == "finished" or (earlier == "interrupted" and _changed(load_state(out), plan)):
        shutil.rmtree(out)  # an earlier demo: run afresh (an interrupted one with these options resumes)
    elif out.exists() and earlier is None:
        shutil.rmtree(out)  # --overwrite
    seconds = {"inspect": round(time.perf_counter() - t0, 1)}

    def announce(i, n, stage):
        info(f"[{i + 1}/{n + 1}] {HEADINGS['prune-moe' if moe and stage == 'prune' else stage]}")

    run = execute(r, plan, announce=announce)
    docs = {s: e["doc"] for s, e in run["stages"].items()}
    seconds.update({s: e["seconds"] for s, e in run["stages"].items()})
    doc = _result(docs, arch_doc, budget_bytes, seconds, time.perf_counter() - t0, out)
    doc["teacher"] = teacher_name
    write_provenance(out, "demo", {"out": str(out), "steps": steps, "teacher": teacher_name,
                                   "budget_fraction": None if moe else budget_fraction, "recipe": str(r.path)},
                     inputs={"teacher": str(teacher), "train": str(train), "heldout": str(heldout)}, result=doc)
    if json_out:
        emit_json(doc)
    else:
        _render(doc, docs["eval"], run)


def _earlier_demo(out: Path, recipe_name: str) -> str | None:
    """`finished` when an earlier `minitron demo` wrote `out`, `interrupted` when one started it (with this
    recipe), else None."""
    if made_by_demo(out):
        return "finished"
    from minitron.cli.run_cmd import load_state

    recipe = load_state(out).get("recipe") or ""
    return ("interrupted" if Path(recipe).name == f"{recipe_name}.yaml" and Path(recipe).parent.name == "recipes"
            else None)


def _changed(state: dict, plan: dict) -> bool:
    return any(e.get("argv") != plan.get(s) for s, e in state.get("stages", {}).items())


def made_by_demo(out: Path) -> bool:
    """An earlier `minitron demo` wrote `out`: running the demo again replaces it without --overwrite."""
    import json

    try:
        return json.loads((out / "minitron.json").read_text()).get("command") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ stages
def _inspect(teacher: Path, fraction: float | None) -> tuple[dict, int | None]:
    from minitron.recipes.inspect import describe

    doc = describe(teacher, context_length=CONTEXT, dtype="bf16", engine=None)  # weights + KV + state: no engine terms
    total = doc["memory"]["total_bytes"]
    budget = None if fraction is None else int(total * fraction)
    active = doc.get("active_params", {}).get("total")
    info(f"[1/5] inspect: {teacher.name}, {doc['pattern']}, {fmt_params(doc['params']['total'])} parameters"
         + (f" ({fmt_params(active)} active)" if active and active != doc["params"]["total"] else "")
         + f", {fmt_bytes(total)} at {CONTEXT:,} tokens (bf16)"
         + (f"; budget {fmt_bytes(budget)}" if budget is not None else ""))
    return doc, budget


# ------------------------------------------------------------------------------------------ output
def _shape(plan: dict) -> str:
    return (f"{plan['num_layers']} layers {plan['pattern']}, hidden {plan['hidden_size']}, ffn {plan['ffn_size']}, "
            f"mamba {plan['mamba_heads']} x {plan['mamba_head_dim']}, attention {plan['attention_heads']}q/"
            f"{plan['kv_heads']}kv")


def _result(docs: dict, arch_doc, budget_bytes: int, seconds, total, out: Path) -> dict:
    from minitron.evaluate.local_task import TASK_NAME

    eval_doc, prune_doc, distill_doc = docs["eval"], docs["prune"], docs["distill"]
    models = []
    for role, row in zip(("teacher", "pruned", "distilled"), eval_doc["models"], strict=True):
        task = (row.get("tasks") or {}).get(TASK_NAME, {})
        models.append({
            "name": role,
            "path": row["path"],
            "params": row["params"],
            "memory_bytes": row["memory"]["total_bytes"],
            "loss": row["loss"],
            "perplexity": row["perplexity"],
            "kl": row["kl"],
            "cloze_acc": task.get("acc"),
            "decode_tokens_per_second": (row.get("throughput") or {}).get("decode_tokens_per_second"),
            "tasks": row.get("tasks"),
            "throughput": row.get("throughput"),
        })
    return {
        "models": models,
        "seconds": round(total, 1),
        "stage_seconds": seconds,
        "out": str(out),
        "budget_bytes": budget_bytes,
        "memory_context_length": CONTEXT,
        "teacher_pattern": arch_doc["pattern"],
        "plan": prune_doc.get("plan"),
        "distill": {k: distill_doc.get(k) for k in ("steps", "tokens", "wall_time_s", "initial_eval", "final_eval")},
        "eval_settings": eval_doc.get("settings"),
    }


def _render(doc: dict, eval_doc: dict, run: dict) -> None:
    from minitron.cli.eval_table import render

    out = stdout()
    render(eval_doc, out)
    plan = doc.get("plan") or {}
    lead = (f"budget {fmt_bytes(doc['budget_bytes'])} at {doc['memory_context_length']:,} tokens (bf16)"
            if doc["budget_bytes"] is not None else
            f"kept {plan.get('experts')} routed experts x {plan.get('moe_ffn_size')} neurons, top-{plan.get('experts_per_token')}")
    out.print(f"{lead}; finished in {doc['seconds']:.0f} s "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in doc['stage_seconds'].items())})")
    for m in doc["models"]:
        out.print(f"  {m['name']:<10} {m['path']}")
    if run.get("publish"):
        out.print(f"publish the result: {run['publish']}", markup=False)
