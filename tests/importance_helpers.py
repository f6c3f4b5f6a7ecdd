"""Shared references of the importance tests: each block's input and output, and the plain-loop aggregation."""

from __future__ import annotations

import math

import torch


def block_io(model, toks) -> dict:
    """{block index: (its input hidden states, its output)} of one no-grad forward of `model` on `toks`."""
    seen = {}
    hooks = [blk.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0], o)))
             for i, blk in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(toks)
    finally:
        for h in hooks:
            h.remove()
    return seen


def naive_aggregate(values, agg):
    """values [B, T, U] -> [U], one unit and one sample at a time."""
    b_n, t_n, u_n = values.shape
    out = []
    for u in range(u_n):
        per_sample = []
        for b in range(b_n):
            col = [float(values[b, t, u]) for t in range(t_n)]
            per_sample.append(sum(col) / t_n if agg.seq == "mean" else math.sqrt(sum(c * c for c in col)))
        out.append(sum(per_sample) / b_n if agg.batch == "mean" else math.sqrt(sum(p * p for p in per_sample)))
    return torch.tensor(out, dtype=torch.float64)
