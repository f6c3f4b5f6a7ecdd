"""`minitron demo`: the whole Minitron pipeline on the bundled teacher, offline, in a few minutes.

Workflow code on purpose: each stage is one library call (the same one its own command makes),
written out in order, with its options chosen for a small model on a CPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import (
    JsonOpt,
    OverwriteOpt,
    command,
    emit_json,
    fmt_bytes,
    fmt_params,
    info,
    stdout,
)
from minitron.cli.progress import PRUNE_UNITS, Progress
from minitron.errors import InputError, MinitronError

RUNS_WITHOUT_ARGS = True  # the README's first command is plain `minitron demo`

SEQ_LEN = 256  # tokens per block in every stage
CONTEXT = 1024  # context length of the memory model that sets the budget
SCORE_SAMPLES = 16
EVAL_SAMPLES = 16
TASK_ITEMS = 60


def demo_paths() -> tuple[Path, Path, Path]:
    """(teacher dir, train.txt, heldout.txt) of the bundled demo assets."""
    from minitron.assets import ASSETS

    demo = ASSETS / "demo"
    return demo / "teacher", demo / "corpus" / "train.txt", demo / "corpus" / "heldout.txt"


@command
def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the scores and the pruned and distilled models "
                                      "(default: ./minitron-demo, replaced if an earlier demo made it).")] = Path("minitron-demo"),
    steps: Annotated[int, typer.Option("--steps", help="Distillation steps (8 x 256 tokens each).")] = 40,
    budget_fraction: Annotated[
        float, typer.Option("--budget-fraction", help="Memory budget as a fraction of the teacher's (bf16, 1024 tokens).")
    ] = 0.5,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
):
    """Run inspect -> score -> prune under a memory budget -> distill -> eval on the bundled teacher.

    The teacher is a 4.6M-parameter Nemotron-H (Mamba-2, MLP and attention layers) trained on the
    Python documentation and shipped inside minitron, with a slice of that text. The budget forces a
    model about half the size; the pruned model is then distilled from the teacher and the three are
    compared (parameters, memory, loss, perplexity, KL to the teacher, a local cloze task, decode speed).
    Offline, a few minutes on a laptop CPU.

    Examples:

      minitron demo

      minitron demo --out /tmp/demo --steps 200 --overwrite

      minitron demo --budget-fraction 0.4 --json
    """
    from minitron.io import check_output_dir

    if steps < 1:
        raise InputError(f"must be >= 1, got {steps}", flag="--steps")
    if not 0.1 <= budget_fraction < 1.0:
        raise InputError(f"must be in [0.1, 1), got {budget_fraction}", flag="--budget-fraction")
    teacher, train, heldout = demo_paths()
    for p in (teacher / "config.json", train, heldout):
        if not p.is_file():
            raise MinitronError(f"the bundled demo asset {p} is missing (a broken install?)")
    check_output_dir(out, overwrite=overwrite or made_by_demo(out), inputs=[teacher])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def stage(name: str, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - t, 1)
        return result

    arch_doc, budget = stage("inspect", _inspect, teacher, budget_fraction)
    stage("score", _score, teacher, train, out / "scores")
    prune_doc = stage("prune", _prune, teacher, out / "scores", heldout, budget, out / "pruned")
    distill_doc = stage("distill", _distill, teacher, out / "pruned", train, heldout, steps, out / "distilled")
    eval_doc = stage("eval", _eval, teacher, out / "pruned", out / "distilled", heldout, out / "task")
    doc = _result(eval_doc, prune_doc, distill_doc, arch_doc, budget, seconds, time.perf_counter() - t0, out)

    from minitron.io import write_provenance

    write_provenance(out, "demo", {"out": str(out), "steps": steps, "budget_fraction": budget_fraction},
                     inputs={"teacher": str(teacher), "train": str(train), "heldout": str(heldout)}, result=doc)
    if json_out:
        emit_json(doc)
    else:
        _render(doc, eval_doc)


def made_by_demo(out: Path) -> bool:
    """An earlier `minitron demo` wrote `out`: running the demo again replaces it without --overwrite."""
    import json

    try:
        return json.loads((out / "minitron.json").read_text()).get("command") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ stages
def _inspect(teacher: Path, fraction: float):
    from minitron.memory import Budget
    from minitron.models.describe import describe

    doc = describe(teacher, context_length=CONTEXT, dtype="bf16", engine=None)  # weights + KV + state: no engine terms
    total = doc["memory"]["total_bytes"]
    budget = Budget(gpu=None, usable_bytes=int(total * fraction), headroom=0.0, reserve_bytes=0)
    info(f"[1/5] inspect: {teacher.name}, {doc['pattern']}, {fmt_params(doc['params']['total'])} parameters, "
         f"{fmt_bytes(total)} at {CONTEXT:,} tokens (bf16); budget {fmt_bytes(budget.budget_bytes)}")
    return doc, budget


def _score(teacher: Path, train: Path, dest: Path) -> dict:
    from minitron.cli.score_cmd import write_outputs
    from minitron.importance.run import ScoreOptions, prepare, run

    info(f"[2/5] score: activation importance of every width unit and KL when each layer is skipped "
         f"({SCORE_SAMPLES} x {SEQ_LEN} tokens)")
    p = prepare(teacher, [str(train)], ScoreOptions(samples=SCORE_SAMPLES, seq_len=SEQ_LEN, batch_size=8,
                                                    device="cpu", dtype="fp32", streaming=False))
    with Progress(unit="layer passes") as bar:
        result = run(p, progress=lambda done, total: bar.update("score", done, total))
    return write_outputs(dest, p, result, overwrite=False)


def _prune(teacher: Path, scores: Path, heldout: Path, budget, dest: Path) -> dict:
    from minitron.prune.run import PruneOptions, prune

    info("[3/5] prune: search shapes under the budget, rank the largest by KL to the teacher, prune the best")
    opts = PruneOptions(
        model=teacher, out=dest, scores=scores, budget=budget, context_length=CONTEXT, dtype="bf16",
        search=["hidden_size=128:256:32", "ffn_size=256:512:64", "mamba_heads=8:16:4"],
        data=[heldout], seq_len=SEQ_LEN, proxy_samples=4, shortlist=4, top_k=4, device="cpu",
        keep_layer_types="attention=1",  # a hybrid stays a hybrid (and transformers' cache needs one)
        engine=None,  # the same model-only figure as the budget
    )
    with Progress(units=PRUNE_UNITS) as bar:
        doc = prune(opts, progress=bar.update, log=lambda m: None)
    plan = doc["plan"]
    info(f"      kept {fmt_params(doc['params_after'])} of {fmt_params(doc['params_before'])} parameters: "
         f"{_shape(plan)}")
    return doc


def _distill(teacher: Path, student: Path, train: Path, heldout: Path, steps: int, dest: Path) -> dict:
    from minitron.distill.run import DistillOptions, run_distill
    from minitron.distill.trainer import TrainConfig

    info(f"[4/5] distill: {steps} steps of forward KL to the teacher's logits (8 x {SEQ_LEN} tokens a step)")
    cfg = TrainConfig(steps=steps, micro_batch_size=8, lr=2e-3, warmup_steps=max(1, steps // 10),
                      schedule="cosine", seed=0)
    opts = DistillOptions(teacher=teacher, student=student, data=[train], out=dest, train=cfg, seq_len=SEQ_LEN,
                          eval_data=[heldout], eval_samples=8, save_every=0, device="cpu", dtype="fp32")
    with Progress(unit="steps") as bar:

        def on_event(kind, payload):
            if kind == "step":
                bar.update("distill", payload["step"], steps, f"kl {payload['loss']:.4f}")

        return run_distill(opts, on_event=on_event)


def _eval(teacher: Path, pruned: Path, distilled: Path, heldout: Path, task_dir: Path) -> dict:
    from minitron.evaluate.compare import EvalOptions, evaluate_models
    from minitron.evaluate.local_task import TASK_NAME, build_local_task
    from minitron.evaluate.throughput import ThroughputSettings

    info(f"[5/5] eval: loss, perplexity and KL on {EVAL_SAMPLES} held-out blocks, a {TASK_ITEMS}-item cloze task "
         f"from the held-out text, memory, decode speed")
    build_local_task(heldout, task_dir, n=TASK_ITEMS)
    opts = EvalOptions(models=[teacher, pruned, distilled], data=[heldout], seq_len=SEQ_LEN, samples=EVAL_SAMPLES,
                       batch_size=8, teacher=teacher, tasks=TASK_NAME, include_path=[task_dir], throughput=True,
                       throughput_settings=ThroughputSettings(prompt_len=64, gen_len=32, runs=3, warmup=1),
                       context_length=CONTEXT, memory_dtype="bf16", engine=None, device="cpu", dtype="fp32")
    from minitron.cli.eval_cmd import _Reporter

    with Progress(unit="blocks") as bar:
        return evaluate_models(opts, _Reporter(bar, messages=False))


# ------------------------------------------------------------------------------------------ output
def _shape(plan: dict) -> str:
    return (f"{plan['num_layers']} layers {plan['pattern']}, hidden {plan['hidden_size']}, ffn {plan['ffn_size']}, "
            f"mamba {plan['mamba_heads']} x {plan['mamba_head_dim']}, attention {plan['attention_heads']}q/"
            f"{plan['kv_heads']}kv")


def _result(eval_doc, prune_doc, distill_doc, arch_doc, budget, seconds, total, out: Path) -> dict:
    from minitron.evaluate.local_task import TASK_NAME

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
        "budget_bytes": budget.budget_bytes,
        "memory_context_length": CONTEXT,
        "teacher_pattern": arch_doc["pattern"],
        "plan": prune_doc.get("plan"),
        "distill": {k: distill_doc.get(k) for k in ("steps", "tokens", "wall_time_s", "initial_eval", "final_eval")},
        "eval_settings": eval_doc.get("settings"),
    }


def _render(doc: dict, eval_doc: dict) -> None:
    from minitron.evaluate.table import render

    out = stdout()
    render(eval_doc, out)
    out.print(f"budget {fmt_bytes(doc['budget_bytes'])} at {doc['memory_context_length']:,} tokens (bf16); "
              f"finished in {doc['seconds']:.0f} s "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in doc['stage_seconds'].items())})")
    for m in doc["models"]:
        out.print(f"  {m['name']:<10} {m['path']}")
