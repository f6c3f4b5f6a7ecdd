"""Candidate width signals, per axis: the registry of names and the pure maths of each formula.

Every signal is a per-token, non-negative value per unit, aggregated like the defaults (`aggregate.py`:
mean over the sequence, L2 over the batch unless `--aggregation` says otherwise). Choose with
`minitron score --width-metric AXIS=NAME` (repeatable).

    axis             name        per token (or across layers)                              source
    hidden           sum *       sum over the norms of the per-layer aggregated |norm(x)|  Minitron
                     l2          sqrt of the sum of their squares (loud layers weigh more)
                     max         their maximum (a channel that matters anywhere is kept)
    ffn              act *       |a_f|, a = act(up_proj x), the input of down_proj          Minitron
                     act_down    |a_f| * ||W_down[:, f]||: the norm of neuron f's output,
                                 exactly its contribution to the residual stream
    attention_heads  act *       ||o_h||, the head's slice of the input of o_proj            Minitron
                     act_out     ||W_o[:, h] o_h||: the head's contribution after o_proj
    kv_heads         (follows attention_heads: the sum over the query heads of the group)
    mamba_heads      x           ||x_h||, the head's x-slice of in_proj's output             Minitron-SSM
                     x_out       ||x_h|| * ||(W_out * w_norm)[:, h]||_F                      minitron < 0.2
                     gated       ||y_h||, y = gated_rmsnorm(scan, z): the input of out_proj
                     gated_out * ||W_out[:, h] y_h||: the head's contribution after out_proj
    mamba_head_dim   x           |x_{h,p}|, aggregated per (h, p), then L2 over the heads    Minitron-SSM
                     gated *     |y_{h,p}|, the same on the input of out_proj

(* the default; the Mamba defaults were `x_out` and `x` before 0.2, changed by the ablation of issue 18:
docs/score.md.) `x_out` is a product of two aggregates, the others aggregate one per-token value; for
`act_down` the two are the same (the column norm is a constant per neuron and both reductions are
homogeneous). The `gated` signals read out_proj's input through a hook on out_proj, so they need a
Mamba path that calls out_proj as a module: transformers' Nemotron-H mixer does on every path but the
fused kernel it only uses when training without a cache (scoring runs in eval mode); if the hook never
fires, finalisation raises instead of writing zeros.
"""

from __future__ import annotations

from minitron.errors import InputError

FLAG = "--width-metric"

# axis -> (default, every name); the first name of each tuple is the paper's
WIDTH_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hidden": ("sum", ("sum", "l2", "max")),
    "ffn": ("act", ("act", "act_down")),
    "attention_heads": ("act", ("act", "act_out")),
    "mamba_heads": ("gated_out", ("x", "x_out", "gated", "gated_out")),
    "mamba_head_dim": ("gated", ("x", "gated")),
}
AXIS_ALIASES = {"attention": "attention_heads", "heads": "attention_heads", "mamba": "mamba_heads",
                "head_dim": "mamba_head_dim", "mamba_dims": "mamba_head_dim", "neurons": "ffn"}


def metrics_help() -> str:
    """Every axis's names, its default marked: `hidden: sum (default), l2, max; ffn: ...` (the flag's help)."""
    return "; ".join(f"{axis}: " + ", ".join(f"{n} (default)" if n == d else n for n in names)
                     for axis, (d, names) in WIDTH_METRICS.items())  # fmt: skip


def defaults() -> dict[str, str]:
    return {axis: d for axis, (d, _) in WIDTH_METRICS.items()}


def parse_width_metrics(items) -> dict[str, str]:
    """`["ffn=act_down", "mamba_heads=gated,hidden=l2"]` -> {"ffn": "act_down", ...}; errors name the flag.

    Only the axes given are in the result (the others keep their default).
    """
    out: dict[str, str] = {}
    for item in items or []:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            axis, sep, name = (s.strip().lower().replace("-", "_") for s in part.partition("="))
            axis = AXIS_ALIASES.get(axis, axis)
            if not sep or axis not in WIDTH_METRICS:
                raise InputError(f"expected AXIS=NAME with AXIS one of {', '.join(WIDTH_METRICS)}; got {part!r}",
                                 flag=FLAG)
            names = WIDTH_METRICS[axis][1]
            if name not in names:
                raise InputError(f"unknown {axis} metric {name!r} (expected {', '.join(names)})", flag=FLAG)
            if axis in out and out[axis] != name:
                raise InputError(f"{axis} is given twice ({out[axis]}, {name})", flag=FLAG)
            out[axis] = name
    return out


def resolve(chosen: dict[str, str] | None) -> dict[str, str]:
    """Every axis -> its metric: the chosen ones over the defaults."""
    return {**defaults(), **(chosen or {})}


def format_metrics(chosen: dict[str, str]) -> str:
    """{"ffn": "act_down"} -> "ffn=act_down" (sorted; the scores' metadata and provenance)."""
    return ",".join(f"{k}={v}" for k, v in sorted(chosen.items()))


# ---------------------------------------------------------------------- the maths (tensors in, out)
def combine_layers(per_layer, how: str):
    """L per-layer aggregated [C] channel scores -> [C] hidden-channel scores (`sum`, `l2` or `max`).

    Added one layer after the other, in order (the sum is then bit-identical to the scores of
    earlier versions).
    """
    import torch

    if how == "sum":
        out = per_layer[0].clone()
        for t in per_layer[1:]:
            out = out + t
        return out
    if how == "l2":
        return torch.stack(list(per_layer)).pow(2).sum(dim=0).sqrt()
    if how == "max":
        return torch.stack(list(per_layer)).max(dim=0).values
    raise ValueError(how)


def column_norms(weight):
    """[out, in] weight -> [in]: the L2 norm of each input column (float64)."""
    return weight.double().norm(dim=0)


def head_contributions(a, weight, n_heads: int):
    """[B, T, H·D] head-major input of a projection and its [out, H·D] weight -> [B, T, H] float32:
    ||W[:, h] a_h|| per token, the norm of what head h adds to the projection's output.

    Through each head's Gram matrix G_h = W[:, h]^T W[:, h] ([D, D], once per call): ||W_h a_h||^2 =
    a_h^T G_h a_h, so a token costs H·D^2 multiply-adds instead of the projection's H·D·out.
    """
    import torch

    b, t, c = a.shape
    d = c // n_heads
    w = weight.float().reshape(weight.shape[0], n_heads, d)  # [out, H, D]
    gram = torch.einsum("ohp,ohq->hpq", w, w)  # [H, D, D]
    ah = a.float().reshape(b, t, n_heads, d)
    sq = (torch.einsum("bthp,hpq->bthq", ah, gram) * ah).sum(dim=-1)  # [B, T, H]
    return sq.clamp_min(0).sqrt()
