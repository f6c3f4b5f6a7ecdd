"""`minitron distill`: logit distillation of a (pruned) student from its teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import JsonOpt, OverwriteOpt, command, emit_json, fmt_int, stdout
from minitron.cli.progress import Progress


@command
def command(
    teacher: Annotated[Path, typer.Option("--teacher", help="Teacher model directory (e.g. the unpruned model).")],
    student: Annotated[Path, typer.Option("--student", help="Student model directory (e.g. the pruned model).")],
    data: Annotated[list[Path], typer.Option("--data", help="Training text: .txt, .jsonl or .parquet (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for the distilled student.")],
    steps: Annotated[int | None, typer.Option("--steps", help="Optimiser steps (or give --tokens).")] = None,
    tokens: Annotated[int | None, typer.Option("--tokens", help="Training tokens; steps = ceil(tokens / (global batch x seq len)).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per training block (default: min(2048, max_position_embeddings)).")] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", help="Blocks per forward pass per process.")] = 4,
    global_batch_size: Annotated[int | None, typer.Option("--global-batch-size", help="Blocks per optimiser step over all processes; gradient accumulation follows (default: micro x processes).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-4,
    min_lr: Annotated[float | None, typer.Option("--min-lr", help="Final learning rate (default lr/10).")] = None,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warmup steps.")] = 0,
    schedule: Annotated[str, typer.Option("--schedule", help="wsd, cosine or constant.")] = "wsd",
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay (matrices only).")] = 0.0,
    clip: Annotated[float, typer.Option("--clip", help="Gradient-norm clip (0: none).")] = 1.0,
    loss: Annotated[str, typer.Option("--loss", help="forward-kl, reverse-kl or jsd.")] = "forward-kl",
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature of both models.")] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Restrict the loss to the teacher's top-k tokens.")] = None,
    ce_weight: Annotated[float, typer.Option("--ce-weight", help="Weight of the student's LM loss mixed in.")] = 0.0,
    eval_data: Annotated[list[Path] | None, typer.Option("--eval-data", help="Held-out text for val KL / val LM loss (repeatable).")] = None,
    eval_samples: Annotated[int | None, typer.Option("--eval-samples", help="At most this many eval blocks (default: all; 16 training blocks without --eval-data).")] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Evaluate every N steps (0: start and end only).")] = 0,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps into <out>.partial/ (0: never).")] = 100,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints kept.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data order.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Compute dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32. Student master weights stay fp32.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in the backward (less memory).")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Shard student and teacher with FSDP2 (under torchrun).")] = False,
    fsdp_load: Annotated[str, typer.Option("--fsdp-load", help="With --fsdp: sharded (each rank reads only its shards of the checkpoints) or full (every rank loads them whole on CPU first: the former path).")] = "sharded",
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", help="Tokens per chunk of the loss (default: 16 MiB fp32 temporaries, 32 tokens at vocab 131072).")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Text field of .jsonl/.parquet records.")] = "text",
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest output shard: 5GB, 500MiB, bytes.")] = "5GB",
    restart: Annotated[bool, typer.Option("--restart", help="Discard an unfinished run in <out>.partial/ instead of resuming it.")] = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the memory plan per device (1 and N devices) and whether it fits --gpu/--memory-budget; load nothing, write nothing (exit 3 if it does not fit).")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Devices to plan for (default: the torchrun processes; --dry-run also shows 8).")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="Budget per device: a GPU preset (a10g, l4, a100-80gb, h100-80gb, h200, ...); a run that does not fit is refused (exit 3).")] = None,
    memory_budget: Annotated[str | None, typer.Option("--memory-budget", help="Budget per device as a size (e.g. 80GiB); as --gpu.")] = None,
    report_to: Annotated[str, typer.Option("--report-to", help="none or tensorboard (events in <out>.partial/tensorboard while running, then <out>/tensorboard); metrics.jsonl is always written.")] = "none",
    teacher_logits: Annotated[Path | None, typer.Option("--teacher-logits", help="Cached teacher logits (from `minitron teacher-logits`): train on them without loading the teacher; --teacher is still checked against the cache.")] = None,
):
    """Distil a student from a teacher on the teacher's logits (Minitron: forward KL, T = 1).

    The teacher is frozen; the student trains with AdamW. Checkpoints and metrics.jsonl live in
    <out>.partial/ while the run goes; running the same command again resumes there. --out appears,
    complete, at the end (Hugging Face model + tokenizer + metrics.jsonl + minitron.json).

    Examples:

      minitron distill --teacher base/ --student pruned/ --data train.jsonl --out distilled/ --steps 1000

      minitron distill --teacher base/ --student pruned/ --data train.txt --eval-data val.txt --tokens 50000000 --seq-len 4096 --micro-batch-size 2 --global-batch-size 64 --lr 1e-4 --warmup-steps 50 --out distilled/

      torchrun --nproc-per-node 8 -m minitron distill --teacher 12b/ --student 9b/ --data train.jsonl --fsdp --global-batch-size 256 --steps 2000 --out 9b-distilled/
    """
    from minitron import distributed as dist
    from minitron.recipes.distill import DistillOptions
    from minitron.distill.trainer import TrainConfig
    from minitron.errors import InputError

    if (steps is None) == (tokens is None):
        raise InputError("give exactly one of --steps and --tokens", flag="--steps")
    if steps is not None and steps < 1:
        raise InputError(f"must be >= 1, got {steps}", flag="--steps")
    cfg = TrainConfig(
        steps=steps or 1, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size, lr=lr, min_lr=min_lr,
        warmup_steps=warmup_steps, schedule=schedule, weight_decay=weight_decay, clip=clip or None, loss=loss,
        temperature=temperature, top_k=top_k, ce_weight=ce_weight, eval_every=eval_every, seed=seed,
        chunk_size=chunk_size,
    )  # fmt: skip
    opts = DistillOptions(
        teacher=teacher, student=student, data=list(data), out=out, train=cfg, tokens=tokens, seq_len=seq_len,
        eval_data=list(eval_data or []), eval_samples=eval_samples, text_field=text_field, save_every=save_every,
        keep_last=keep_last, device=device, dtype=dtype, gradient_checkpointing=gradient_checkpointing, fsdp=fsdp,
        overwrite=overwrite, restart=restart, max_shard_size=max_shard_size, teacher_logits=teacher_logits,
        nproc=nproc, gpu=gpu, memory_budget=memory_budget, report_to=report_to, fsdp_load=fsdp_load,
    )  # fmt: skip
    if dry_run:
        return _dry_run(opts, json_out)
    from minitron.device import resolve_device

    with dist.session(resolve_device(device)):
        summary = _run(opts)
        if not dist.is_main():
            return
    doc = {k: summary[k] for k in ("steps", "tokens", "initial_eval", "final_eval", "out_dir", "tokens_per_second")}
    doc.update({k: v for k, v in summary.items() if k not in doc})
    if json_out:
        emit_json(doc)
    else:
        render(doc)


def _run(opts):
    from minitron import distributed as dist
    from minitron.recipes.distill import run_distill

    bar = Progress(unit="steps", disable=not dist.is_main())

    def on_event(kind, payload):
        if kind == "resume":
            bar.log(f"resuming from step {payload['step']} ({payload['checkpoint']})")
        elif kind == "eval":
            ev = payload["eval"]
            bar.log(f"eval @ step {payload['step']}: val KL {ev['kl']:.4f}  val LM loss {ev['loss']:.4f}")
        elif kind == "step":
            kl = f"kl {payload['kl']:.4f}  " if "kl" in payload else ""
            status = (f"loss {payload['loss']:.4f}  {kl}lr {payload['lr']:.2e}  gnorm {payload['grad_norm']:.3f}  "
                      f"{payload['tokens_per_second']:,.0f} tok/s")  # fmt: skip
            bar.update("distill", payload["step"], opts.train.steps, status)

    with bar:
        return run_distill(opts, on_event=on_event)


def render(doc: dict) -> None:
    out = stdout()
    ie, fe = doc.get("initial_eval") or {}, doc.get("final_eval") or {}
    out.print(f"[bold]distilled[/bold] {doc['out_dir']}: {doc['steps']} steps, {fmt_int(doc['tokens'])} tokens"
              + (f", {doc['tokens_per_second']:,.0f} tokens/s" if doc.get("tokens_per_second") else ""))  # fmt: skip
    if ie and fe:
        src = "" if doc.get("eval_source") == "eval-data" else " (on training blocks; give --eval-data for held-out figures)"
        out.print(f"val KL   {ie['kl']:.4f} -> {fe['kl']:.4f}{src}")
        out.print(f"val loss {ie['loss']:.4f} -> {fe['loss']:.4f}")


def _dry_run(opts, json_out: bool) -> None:
    """`--dry-run`: the memory plan (library: `minitron.recipes.distill_plan`), then exit 3 if it does not fit."""
    from minitron.recipes.distill_plan import check_plan, memory_plan

    doc = memory_plan(opts)
    if json_out:
        emit_json(doc)
    else:
        _render_plan(doc)
    check_plan(doc)


PLAN_ROWS = ("teacher_weights", "student_weights", "gradients", "optimizer", "fsdp_gathered", "activations", "logits",
             "runtime")  # fmt: skip


def _render_plan(doc: dict) -> None:
    from rich.table import Table

    from minitron.cli.common import fmt_bytes

    plans = {f"{k} device{'s' if k != '1' else ''}" + (" FSDP2" if p["fsdp"] else ""): p for k, p in doc["plans"].items()}
    plans["asked"] = doc["asked"]
    table = Table(title="memory per device", title_justify="left")
    table.add_column("term")
    for name in plans:
        table.add_column(name, justify="right")
    for row in PLAN_ROWS:
        table.add_row(row.replace("_", " "), *[fmt_bytes(p["terms"][row]) for p in plans.values()])
    table.add_row("[bold]total[/bold]", *[f"[bold]{fmt_bytes(p['total'])}[/bold]" for p in plans.values()])
    a = doc["asked"]
    out = stdout()
    out.print(table)
    out.print(f"activations: {fmt_bytes(a['activations_without_checkpointing'])} without gradient checkpointing, "
              f"{fmt_bytes(a['activations_with_checkpointing'])} with (micro-batch {a['micro_batch_size']} x "
              f"{a['seq_len']} tokens, {a['compute_dtype']})")  # fmt: skip
    if doc["budget"]:
        verdict = "fits" if doc["fits"] else "does not fit"
        out.print(f"asked ({a['devices']} device(s){' FSDP2' if a['fsdp'] else ''}): {fmt_bytes(a['total'])} "
                  f"{verdict} the budget of {fmt_bytes(doc['budget']['budget_bytes'])}"
                  + (f"; cheapest change that fits: {doc['suggestion']}" if doc.get("suggestion") else ""))  # fmt: skip
