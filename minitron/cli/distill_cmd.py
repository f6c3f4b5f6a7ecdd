"""`minitron distill`: logit distillation of a (pruned) student from its teacher."""

from __future__ import annotations

from typing import Annotated

import typer

from minitron.cli.common import JsonOpt, command, emit_json, fmt_int, stdout
from minitron.cli.options import with_options
from minitron.cli.progress import Progress
from minitron.errors import InfeasibleError
from minitron.recipes.distill import DistillOptions


@command
@with_options(DistillOptions)
def command(
    options,
    json_out: JsonOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the memory plan per device (1 and N devices) and whether it fits --gpu/--memory-budget; load nothing, write nothing (exit 3 if it does not fit).")] = False,
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

    opts = options().check_length()
    if dry_run:
        return _dry_run(opts, json_out)
    from minitron.device import resolve_device

    with dist.session(resolve_device(opts.device)):
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
    if not json_out:
        _render_plan(doc)
        check_plan(doc)
        return
    try:
        check_plan(doc)
    except InfeasibleError as e:  # one document under --json: the plan, with the error in it
        e.document = doc
        raise
    emit_json(doc)


PLAN_ROWS = ("teacher_weights", "student_weights", "gradients", "optimizer", "fsdp_gathered", "activations", "logits",
             "intermediate", "runtime")  # fmt: skip


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
