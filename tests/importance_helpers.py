"""Shared references of the importance tests: each block's input and output, and the plain-loop aggregation."""

from __future__ import annotations

import math

import torch


def module_io(model, toks, *groups: dict) -> tuple[dict, ...]:
    """For each `{key: module}` of `groups`, `{key: (its first input, its output)}` of one no-grad forward
    of `model` on `toks`."""
    seen = tuple({} for _ in groups)
    hooks = [mod.register_forward_hook(lambda m, a, o, k=k, s=s: s.__setitem__(k, (a[0], o)))
             for s, group in zip(seen, groups, strict=True) for k, mod in group.items()]
    try:
        with torch.no_grad():
            model(toks)
    finally:
        for h in hooks:
            h.remove()
    return seen


def block_io(model, toks) -> dict:
    """{block index: (its input hidden states, its output)} of one no-grad forward of `model` on `toks`."""
    return module_io(model, toks, dict(enumerate(model.model.layers)))[0]


def attention_output(mixer, n, a):
    """The attention output entering o_proj, written out: causal softmax(q k^T / sqrt(d)) v per head."""
    b, t, _ = n.shape
    q = mixer.q_proj(n).view(b, t, a.num_attention_heads, a.head_dim).transpose(1, 2)
    k = mixer.k_proj(n).view(b, t, a.num_key_value_heads, a.head_dim).transpose(1, 2)
    v = mixer.v_proj(n).view(b, t, a.num_key_value_heads, a.head_dim).transpose(1, 2)
    rep = a.num_attention_heads // a.num_key_value_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    w = (q @ k.transpose(-1, -2)) / math.sqrt(a.head_dim)
    w = w.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    return (w @ v).transpose(1, 2)  # [B, T, heads, d]


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
