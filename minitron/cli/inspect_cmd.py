"""`minitron inspect`: what a Nemotron-H model is and what it costs in GPU memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minitron.cli.common import JsonOpt, command, emit_json, fmt_bytes, fmt_int, fmt_params, stdout
from minitron.memory import GPU_PRESETS, make_budget
from minitron.models.describe import describe


@command
def command(
    model: Annotated[Path, typer.Argument(help="Model directory, or a config.json (weights optional).")],
    context_length: Annotated[int, typer.Option("--context-length", help="Tokens per sequence for the memory model.")] = 131072,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences held at once.")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights and KV dtype: bf16, fp16 or fp32.")] = "bf16",
    state_dtype: Annotated[
        str | None, typer.Option("--state-dtype", help="Mamba SSM state dtype (default: the config's mamba_ssm_cache_dtype).")
    ] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help=f"Check the fit on a GPU: {', '.join(GPU_PRESETS)}.")] = None,
    memory_budget: Annotated[
        str | None, typer.Option("--memory-budget", help="Check the fit against a size instead, e.g. 19.66GiB.")
    ] = None,
    headroom: Annotated[float, typer.Option("--headroom", help="Fraction of the GPU kept free.")] = 0.0,
    reserve_gib: Annotated[float, typer.Option("--reserve-gib", help="GiB reserved for something else.")] = 0.0,
    json_out: JsonOpt = False,
):
    """Show layers, dimensions, exact parameters and the memory at a context length.

    Examples:

      minitron inspect ../shared/reference/nemotron-nano-12b-v2-base

      minitron inspect nvidia/9b-dir --gpu a10g --headroom 0.05 --reserve-gib 1.3 --state-dtype bf16

      minitron inspect MODEL --context-length 32768 --batch-size 8 --json
    """
    budget = make_budget(gpu=gpu, memory_budget=memory_budget, headroom=headroom, reserve_gib=reserve_gib)
    doc = describe(
        model, context_length=context_length, batch_size=batch_size, dtype=dtype, state_dtype=state_dtype, budget=budget
    )
    if json_out:
        emit_json(doc)
        return
    render(doc)


def render(doc: dict) -> None:
    out = stdout()
    w = doc["weights"]
    weights = (
        f"{len(w['files'])} shard(s), {fmt_bytes(w['bytes'])} {w['dtype']}, {w['tensors']} tensors checked"
        if w["present"]
        else "config only (no weights)"
    )
    out.print(f"[bold]{doc['path']}[/bold]  {doc['model_type']}  ({weights})")
    layers = ", ".join(f"{n} {k}" for k, n in doc["layers"].items() if n)
    out.print(f"layers      {doc['num_layers']}: {layers}")
    out.print(f"pattern     {doc['pattern']}")
    mamba = (f"mamba {doc['mamba_num_heads']} heads x {doc['mamba_head_dim']}, {doc['n_groups']} groups, "
             f"state {doc['ssm_state_size']}  ") if doc["units"]["mamba_heads"] else ""
    out.print(
        f"hidden {doc['hidden_size']}  ffn {doc['intermediate_size']}  "
        f"attention {doc['num_attention_heads']}q/{doc['num_key_value_heads']}kv x {doc['head_dim']}  "
        f"{mamba}vocab {doc['vocab_size']}"
    )
    t = Table(title="parameters", title_justify="left")
    t.add_column("component")
    t.add_column("params", justify="right")
    t.add_column("share", justify="right")
    total = doc["params"]["total"]
    for k, v in doc["params"].items():
        if k == "total" or not v:
            continue
        t.add_row(k, fmt_int(v), f"{100 * v / total:.1f}%")
    t.add_row("[bold]total[/bold]", f"[bold]{fmt_int(total)}[/bold]", f"({fmt_params(total)})")
    out.print(t)
    m = doc["memory"]
    t = Table(
        title=f"memory at {m['context_length']:,} tokens x batch {m['batch_size']} "
        f"(weights/KV {m['dtype']}, SSM state {m['state_dtype']})",
        title_justify="left",
    )
    t.add_column("term")
    t.add_column("bytes", justify="right")
    t.add_column("", justify="right")
    for k in ("weights_bytes", "kv_cache_bytes", "mamba_state_bytes"):
        t.add_row(k.removesuffix("_bytes"), fmt_int(m[k]), fmt_bytes(m[k]))
    t.add_row("[bold]total[/bold]", fmt_int(m["total_bytes"]), f"[bold]{fmt_bytes(m['total_bytes'])}[/bold]")
    out.print(t)
    if "budget" in doc:
        b = doc["budget"]
        name = b["gpu"] or "budget"
        verdict = "[green]fits[/green]" if b["fits"] else "[red]does not fit[/red]"
        out.print(
            f"{name}: {fmt_bytes(b['usable_bytes'])} x (1 - {b['headroom']}) - {fmt_bytes(b['reserve_bytes'])} = "
            f"{fmt_bytes(b['budget_bytes'])}  ->  {verdict} (margin {fmt_bytes(b['margin_bytes'])})"
        )
