"""`minitron prune`: structured pruning to an exact shape, a parameter budget or a GPU-memory budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import (
    JsonOpt,
    RevisionOpt,
    command,
    emit_json,
    fmt_bytes,
    fmt_int,
    fmt_params,
    renamed,
    stdout,
    with_revision,
)
from minitron.cli.options import with_options
from minitron.cli.progress import PRUNE_UNITS, Progress
from minitron.memory import describe_memory
from minitron.recipes.prune import PruneOptions


@command
@with_options(PruneOptions)
def command(
    options,
    model: Annotated[Path, typer.Argument(help="Model directory (or a bare config / bundled config name with --dry-run).")],
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

      minitron prune MODEL --scores scores/ --mamba-heads 64 --compensation off --hidden-basis channels --out pruned/

      minitron prune nemotron-3-nano-30b-a3b --experts 96 --moe-ffn-size 1536 --dry-run

      minitron prune nemotron-3-nano-30b-a3b --target-params 22B --target-active-params 3B --dry-run
    """
    from minitron.recipes.prune import prune

    opts = options(model=with_revision(model, revision))
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
    hb = doc.get("hidden_basis")
    if isinstance(hb, dict):
        out.print(f"hidden basis: pca, the first {hb['components']} of {hb['of']} principal components "
                  f"({100 * hb['kept_variance']:.1f}% of the variance; norms x {hb['norm_scale']:.4f})")
    elif hb:
        out.print(f"hidden basis: {hb}")
    comp = doc.get("compensation")
    if isinstance(comp, dict):
        out.print(f"compensation: {comp['tensors']} output projections refitted to their kept inputs "
                  f"(least squares, ridge {comp['ridge']:g})")
    elif comp:
        out.print(f"compensation: {comp}")
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
