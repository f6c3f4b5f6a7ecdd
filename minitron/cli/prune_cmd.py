"""`minitron prune`: structured pruning to an exact shape, a parameter budget or a GPU-memory budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import (
    ContextOpt,
    EngineOpt,
    HeadroomOpt,
    JsonOpt,
    KvDtypeOpt,
    MemoryDtypeOpt,
    OverwriteOpt,
    PrefillChunkOpt,
    ReserveOpt,
    RevisionOpt,
    SeqLenOpt,
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
from minitron.cli.progress import PRUNE_UNITS, Progress
from minitron.memory import GPU_PRESETS, describe_memory


def _int(flag: str, help: str):
    return Annotated[int | None, typer.Option(flag, help=help)]


@command
def command(
    model: Annotated[Path, typer.Argument(help="Model directory (or a bare config / bundled config name with --dry-run).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output model directory.")] = None,
    scores: Annotated[Path | None, typer.Option("--scores", help="Scores directory written by `minitron score`.")] = None,
    hidden_size: _int("--hidden-size", "Exact target: hidden (embedding) channels.") = None,
    ffn_size: _int("--ffn-size", "Exact target: FFN neurons per MLP layer.") = None,
    mamba_heads: _int("--mamba-heads", "Exact target: Mamba heads per layer (a multiple of the groups).") = None,
    mamba_head_dim: _int("--mamba-head-dim", "Exact target: channels per Mamba head.") = None,
    attention_heads: _int("--attention-heads", "Exact target: query heads per attention layer.") = None,
    kv_heads: _int("--kv-heads", "Exact target: KV heads (whole GQA groups) per attention layer.") = None,
    experts: _int("--experts", "Exact target: routed experts kept per MoE layer (a multiple of n_group).") = None,
    moe_ffn_size: _int("--moe-ffn-size", "Exact target: neurons kept in every routed expert.") = None,
    shared_expert_ffn_size: _int("--shared-expert-ffn-size", "Exact target: neurons of the shared expert.") = None,
    experts_per_token: _int("--experts-per-token", "Exact target: the router's top-k (changes the function).") = None,
    num_layers: _int("--num-layers", "Exact depth: drop the least important layers (layer scores).") = None,
    drop_layers: Annotated[str | None, typer.Option("--drop-layers", help="Exact depth: 0-based layers to drop, e.g. 7,8,17.")] = None,
    iterative: Annotated[bool, typer.Option("--iterative", help="With --num-layers: re-score layers after each removal (needs --data).")] = False,
    keep_layer_types: Annotated[str | None, typer.Option("--keep-layer-types", help="Minimum layers kept per type, e.g. attention=4,mamba=20.")] = None,
    target_params: Annotated[str | None, typer.Option("--target-params", help="Search under a parameter count: 9B, 8.9e9, 8888227328.")] = None,
    target_active_params: Annotated[str | None, typer.Option("--target-active-params", help="Search under active parameters per token (MoE), e.g. 3B; combinable with the other targets.")] = None,
    memory_budget: Annotated[str | None, typer.Option("--memory-budget", help="Search under a memory budget, e.g. 19.66GiB.")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help=f"Search under a GPU's memory: {', '.join(GPU_PRESETS)}.")] = None,
    headroom: HeadroomOpt = None,
    reserve_gib: ReserveOpt = None,
    engine: EngineOpt = "vllm",
    kv_dtype: KvDtypeOpt = None,
    prefill_chunk: PrefillChunkOpt = None,
    tensor_parallel: TensorParallelOpt = 1,
    context_length: ContextOpt = None,
    sequences: SequencesOpt = 1,
    memory_dtype: MemoryDtypeOpt = "bf16",
    state_dtype: StateDtypeOpt = None,
    search: Annotated[list[str] | None, typer.Option("--search", help="Search range AXIS=MIN:MAX[:STEP] (repeatable).")] = None,
    drop_order: Annotated[str | None, typer.Option("--drop-order", help="Order in which layers go when depth is searched.")] = None,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Calibration text to rank candidates by a zero-shot proxy.")] = None,
    seq_len: SeqLenOpt = None,
    proxy_samples: Annotated[int, typer.Option("--proxy-samples", help="Held-back blocks for the proxy.")] = 8,
    proxy: Annotated[str, typer.Option("--proxy", help="Zero-shot proxy: kl (to the original) or loss (LM loss).")] = "kl",
    shortlist: Annotated[int, typer.Option("--shortlist", help="Candidates shortlisted from the band, spread across the axes; the proxy ranks them all.")] = 8,
    band: Annotated[float | None, typer.Option("--band", help="Shortlist from candidates within this fraction of the largest feasible budget use (default 0.05).")] = None,
    candidate_distill_steps: Annotated[int, typer.Option("--candidate-distill-steps", help="Short distillation of the proxy's best --distill-candidates before the final ranking (needs --data).")] = 0,
    distill_candidates: Annotated[int, typer.Option("--distill-candidates", help="How many of the proxy's best --candidate-distill-steps distils.")] = 3,
    distill_samples: Annotated[int, typer.Option("--distill-samples", help="Training blocks for --candidate-distill-steps.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of the short distillation.")] = 1e-4,
    candidates: Annotated[int, typer.Option("--candidates", help="Candidates shown (and distilled); 0 lists every feasible one.")] = 10,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan or the candidate table; write nothing.")] = False,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest output shard.")] = "5GB",
    seed: Annotated[int, typer.Option("--seed", help="Seed for the calibration sample.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N], for the proxy, distillation and --iterative.")] = "auto",
    overwrite: OverwriteOpt = False,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
    _dtype: renamed("--dtype", "--memory-dtype", " (--dtype is the compute dtype where a model runs)") = None,
    _batch_size: renamed("--batch-size", "--sequences", " (--batch-size is blocks per forward pass)") = None,
    _top_k: renamed("--top-k", "--candidates", " (--top-k is the teacher's top-k tokens in distill)") = None,
):
    """Prune a Nemotron-H model to an exact shape, a parameter count, an active-parameter count or a GPU-memory budget.

    Writing weights needs the scores of `minitron score`; --dry-run shows the plan or the candidate
    table (also on a bare config). With a budget, a --shortlist of the candidates that fit is taken
    from those within --band of the largest budget use, spread across the axes; with weights, --scores
    and --data the zero-shot proxy (KL to the original) ranks all of it, then optionally the best
    --distill-candidates are ranked after --candidate-distill-steps of distillation; without them the
    largest wins. The winner is pruned; the table says why it won.

    Examples:

      minitron prune nemotron-nano-12b-v2-base --hidden-size 4480 --ffn-size 15680 --mamba-heads 128 --drop-layers 7,8,17,18,48,52 --dry-run

      minitron prune MODEL --scores scores/ --hidden-size 4480 --ffn-size 15680 --num-layers 56 --out pruned/

      minitron prune MODEL --scores scores/ --gpu a10g --headroom 0.05 --reserve-gib 1.3 --context-length 131072 --search num_layers=52:56:2 --search hidden_size=4480:5120:128 --search ffn_size=13440:20480:64 --search mamba_heads=112:128:8 --data calib.txt --out pruned/

      minitron prune MODEL --scores scores/ --target-params 9B --candidates 0 --dry-run --json

      minitron prune nemotron-3-nano-30b-a3b --experts 96 --moe-ffn-size 1536 --dry-run

      minitron prune nemotron-3-nano-30b-a3b --target-params 22B --target-active-params 3B --dry-run
    """
    from minitron.memory import make_budget, parse_size
    from minitron.recipes.prune import PruneOptions, prune
    from minitron.prune.search import parse_params
    from minitron.prune.select import Shape

    opts = PruneOptions(
        model=with_revision(model, revision), out=out, scores=scores,
        shape=Shape(hidden_size, ffn_size, mamba_heads, mamba_head_dim, attention_heads, kv_heads, experts, moe_ffn_size,
                    shared_expert_ffn_size, experts_per_token),
        num_layers=num_layers, drop_layers=drop_layers, iterative=iterative, keep_layer_types=keep_layer_types,
        target_params=parse_params(target_params) if target_params is not None else None,
        target_active_params=parse_params(target_active_params, flag="--target-active-params")
        if target_active_params is not None else None,
        budget=make_budget(gpu=gpu, memory_budget=memory_budget, headroom=headroom, reserve_gib=reserve_gib,
                           engine=engine),
        context_length=context_length, batch_size=sequences, dtype=memory_dtype, state_dtype=state_dtype,
        engine=engine, kv_dtype=kv_dtype, prefill_chunk=prefill_chunk, tensor_parallel=tensor_parallel,
        search=search or [], drop_order=drop_order, data=data or [], seq_len=seq_len, proxy_samples=proxy_samples,
        proxy=proxy, shortlist=shortlist, band=band, candidate_distill_steps=candidate_distill_steps,
        distill_candidates=distill_candidates,
        distill_samples=distill_samples, lr=lr, top_k=candidates, dry_run=dry_run, overwrite=overwrite,
        max_shard_bytes=parse_size(max_shard_size, flag="--max-shard-size"), seed=seed, device=device,
    )  # fmt: skip
    with Progress(units=PRUNE_UNITS) as bar:
        doc = prune(opts, progress=bar.update, log=bar.log)
    if json_out:
        emit_json(doc)
        return
    render(doc)


def render(doc: dict) -> None:
    from rich.table import Table

    out = stdout()
    if "candidates" in doc:
        t = Table(title=f"candidates ({doc['n_feasible']} feasible of {doc['n_candidates']}, ranked by {doc['ranking']}; "
                        f"memory at {describe_memory(doc['memory'])})", title_justify="left")
        cols = ["num_layers", "hidden_size", "ffn_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads"]
        heads = ["#", "layers", "hidden", "ffn", "m.heads", "m.dim", "q", "kv"]
        moe = bool(doc["plan"]["experts"])
        if moe:  # a MoE model: its expert axes and the active parameters per token
            cols += ["experts", "moe_ffn_size", "shared_expert_ffn_size", "experts_per_token"]
            heads += ["experts", "e.ffn", "s.ffn", "top-k"]
        extra = [k for k in ("proxy_kl", "proxy_loss", "distill_kl", "distill_loss") if any(k in c for c in doc["candidates"])]
        heads += ["params", *(["active"] if moe else []), "memory", "use"]
        for c in heads + [k.replace("_", " ") for k in extra]:
            t.add_column(c, justify="right", no_wrap=True)
        for c in doc["candidates"]:
            mark = "*" if c.get("shortlisted") else ""  # shortlisted: from the band, spread across the axes
            row = [f"{mark}{c['rank']}", *(str(c[k]) for k in cols), fmt_params(c["params"]),
                   *([fmt_params(c["active_params"])] if moe else []), fmt_bytes(c["memory_bytes"]),
                   f"{100 * c['budget_use']:.2f}%"]
            row += [f"{c[k]:.4f}" if c.get(k) is not None else "—" for k in extra]
            t.add_row(*row)
        out.print(t)
        sl = doc["shortlist"]
        out.print(f"shortlist (*): {sl['size']} of the {sl['in_band']} within {100 * sl['band']:g}% of the largest "
                  f"budget use, spread over {', '.join(sl['spread_axes']) or 'no varying axis'}")
        out.print(f"winner: {doc['winner_reason']}")
    p = doc["plan"]
    out.print(
        f"plan: {p['num_layers']} layers, hidden {p['hidden_size']}, ffn {p['ffn_size']}, "
        f"mamba {p['mamba_heads']} x {p['mamba_head_dim']}, attention {p['attention_heads']}q/{p['kv_heads']}kv"
    )
    if p["experts"]:
        out.print(f"moe: {p['experts']} routed experts x {p['moe_ffn_size']}, top-{p['experts_per_token']}, "
                  f"shared expert {p['shared_expert_ffn_size']}")
    out.print(f"dropped layers: {p['dropped_layers'] or 'none'}")
    out.print(f"pattern: {p['pattern']}")
    out.print(f"parameters: {fmt_int(doc['params_before'])} -> [bold]{fmt_int(doc['params_after'])}[/bold] "
              f"({fmt_params(doc['params_after'])})")
    if doc["active_params_before"] != doc["params_before"] or doc["active_params_after"] != doc["params_after"]:
        out.print(f"active per token: {fmt_int(doc['active_params_before'])} -> "
                  f"[bold]{fmt_int(doc['active_params_after'])}[/bold] ({fmt_params(doc['active_params_after'])})")
    mb, ma = doc["memory_before"], doc["memory"]
    out.print(f"memory at {describe_memory(ma)}: {fmt_bytes(mb['total_bytes'])} -> "
              f"[bold]{fmt_bytes(ma['total_bytes'])}[/bold]")
    if "budget" in doc:
        b = doc["budget"]
        verdict = "[green]fits[/green]" if b["fits"] else "[red]does not fit[/red]"
        out.print(f"budget {fmt_bytes(b['budget_bytes'])}: {verdict} (margin {fmt_bytes(b['margin_bytes'])}); "
                  f"concurrent sequences of {ma['context_length']:,} tokens: {b['max_sequences_before']:,} -> {b['max_sequences']:,}")
    if doc["dry_run"]:
        out.print("dry run: nothing written")
    else:
        out.print(f"wrote {doc['out']} ({len(doc['files']['files'])} shard(s), {fmt_bytes(doc['files']['bytes'])})")
