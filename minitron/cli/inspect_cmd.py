"""`minitron inspect`: what a Nemotron-H model is and what it costs in GPU memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minitron.cli.common import (
    ContextOpt,
    EngineOpt,
    HeadroomOpt,
    JsonOpt,
    KvDtypeOpt,
    MemoryDtypeOpt,
    PrefillChunkOpt,
    ReserveOpt,
    RevisionOpt,
    SequencesOpt,
    StateDtypeOpt,
    TensorParallelOpt,
    command,
    emit_json,
    fmt_bytes,
    fmt_int,
    fmt_params,
    renamed,
    stdout,
    with_revision,
)
from minitron.memory import GPU_PRESETS, describe_memory, make_budget
from minitron.recipes.inspect import describe

# The memory table's rows: every term of the memory model (docs/serving.md).
MEMORY_TERMS = (
    ("weights_bytes", "weights"),
    ("kv_cache_bytes", "kv_cache ({kv_dtype})"),
    ("mamba_state_bytes", "mamba_state"),
    ("mamba_ssm_bytes", "  SSM state ({state_dtype})"),
    ("mamba_conv_bytes", "  conv state ({conv_window} columns)"),
    ("prefill_activation_bytes", "prefill activations ({prefill_tokens:,} tokens)"),
    ("logits_bytes", "logits ({logits_rows} rows, fp32)"),
)


@command
def command(
    model: Annotated[Path, typer.Argument(help="Model directory, a config.json, or a bundled reference name.")],
    context_length: ContextOpt = None,
    sequences: SequencesOpt = 1,
    memory_dtype: MemoryDtypeOpt = "bf16",
    state_dtype: StateDtypeOpt = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help=f"Check the fit on a GPU: {', '.join(GPU_PRESETS)}.")] = None,
    memory_budget: Annotated[
        str | None, typer.Option("--memory-budget", help="Check the fit against a size instead, e.g. 19.66GiB.")
    ] = None,
    headroom: HeadroomOpt = None,
    reserve_gib: ReserveOpt = None,
    engine: EngineOpt = "vllm",
    kv_dtype: KvDtypeOpt = None,
    prefill_chunk: PrefillChunkOpt = None,
    tensor_parallel: TensorParallelOpt = 1,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
    _dtype: renamed("--dtype", "--memory-dtype", " (--dtype is the compute dtype where a model runs)") = None,
    _batch_size: renamed("--batch-size", "--sequences", " (--batch-size is blocks per forward pass)") = None,
):
    """Show layers, dimensions, exact parameters and the memory at a context length.

    Bundled reference configs (no weights): nemotron-nano-12b-v2-base, nemotron-nano-9b-v2.

    Examples:

      minitron inspect nemotron-nano-12b-v2-base

      minitron inspect nemotron-nano-9b-v2 --gpu a10g --headroom 0.05 --reserve-gib 1.3 --state-dtype bf16

      minitron inspect nemotron-nano-9b-v2 --gpu a10g --context-length 131072 --kv-dtype fp8

      minitron inspect path/to/model --context-length 32768 --sequences 8 --engine hf --json
    """
    budget = make_budget(gpu=gpu, memory_budget=memory_budget, headroom=headroom, reserve_gib=reserve_gib, engine=engine)
    doc = describe(
        with_revision(model, revision), context_length=context_length, batch_size=sequences, dtype=memory_dtype, state_dtype=state_dtype,
        budget=budget, engine=engine, kv_dtype=kv_dtype, prefill_chunk=prefill_chunk, tensor_parallel=tensor_parallel,
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
    if doc["n_routed_experts"] and doc["layers"]["moe"]:
        out.print(f"moe         {doc['n_routed_experts']} routed experts x {doc['moe_intermediate_size']}, "
                  f"top-{doc['num_experts_per_tok']}, shared expert {doc['moe_shared_expert_intermediate_size']}")
    t = Table(title="parameters", title_justify="left")
    t.add_column("component")
    t.add_column("params", justify="right")
    t.add_column("share", justify="right")
    active = doc["active_params"]
    moe = active["total"] != doc["params"]["total"]
    if moe:
        t.add_column("active per token", justify="right")
    total = doc["params"]["total"]
    for k, v in doc["params"].items():
        if k == "total" or not v:
            continue
        t.add_row(k, fmt_int(v), f"{100 * v / total:.1f}%", *([fmt_int(active[k])] if moe else []))
    t.add_row("[bold]total[/bold]", f"[bold]{fmt_int(total)}[/bold]", f"({fmt_params(total)})",
              *([f"[bold]{fmt_int(active['total'])}[/bold] ({fmt_params(active['total'])})"] if moe else []))
    out.print(t)
    if "tensor_parallel" in doc:
        tp = doc["tensor_parallel"]
        rules = "; ".join(f"{p['flag']}: {p['rule']}" for p in tp["problems"])
        out.print(f"tensor parallel {tp['size']}: " + (f"[red]not shardable[/red] ({rules})" if rules else "[green]every width divides[/green]"))
    m = doc["memory"]
    t = Table(title=f"memory at {describe_memory(m)}", title_justify="left")
    t.add_column("term")
    t.add_column("bytes", justify="right")
    t.add_column("", justify="right")
    for k, label in MEMORY_TERMS:
        if k in m:
            t.add_row(label.format(**m), fmt_int(m[k]), fmt_bytes(m[k]))
    t.add_row("[bold]total[/bold]", fmt_int(m["total_bytes"]), f"[bold]{fmt_bytes(m['total_bytes'])}[/bold]")
    t.add_row("per sequence (KV + state)", fmt_int(m["per_sequence_bytes"]), fmt_bytes(m["per_sequence_bytes"]))
    out.print(t)
    if "budget" in doc:
        b = doc["budget"]
        name = b["gpu"] or "budget"
        verdict = "[green]fits[/green]" if b["fits"] else "[red]does not fit[/red]"
        out.print(
            f"{name}: {fmt_bytes(b['usable_bytes'])} x (1 - {b['headroom']}) - {fmt_bytes(b['reserve_bytes'])} = "
            f"{fmt_bytes(b['budget_bytes'])}  ->  {verdict} (margin {fmt_bytes(b['margin_bytes'])}); "
            f"{b['max_sequences']:,} concurrent sequences of {m['context_length']:,} tokens fit"
        )
