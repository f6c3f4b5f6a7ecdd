"""How stable a ranking is on this much calibration data: split-half rank agreement.

`minitron score` also finalises every width score from the even-numbered and from the odd-numbered
micro-batches alone (`Stats(split=True)`), and reports, per axis, the Spearman rank correlation
between the two halves' scores:

    stability(axis) = mean over the axis' rows (layers; layers x experts for expert neurons) of
                      spearman(score_even[row], score_odd[row])

where spearman(a, b) is the Pearson correlation of the ranks of a and of b (ties: average ranks).
1.0: both halves order the units identically, and more samples would not change the ranking;
near 0: the ranking is noise. It is the agreement of two half-size samples, so the full sample's
ranking is steadier than the figure says (Spearman-Brown: about 2r / (1 + r)). Axes with fewer than
3 units (e.g. 2 KV heads) are not reported: two units always correlate at +-1.
"""

from __future__ import annotations

# the width tensors of scores.safetensors whose rows rank units ([units], [rows, units] or [rows, e, units])
AXES = ("hidden", "ffn", "attention_heads", "kv_heads", "mamba_heads", "mamba_head_dim", "experts", "moe_ffn",
        "shared_expert_ffn")
MIN_UNITS = 3


def ranks(x):
    """Average ranks (1-based) of a 1-D tensor, ties sharing the mean of their positions."""
    import torch

    x = x.double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    r = torch.empty_like(x)
    pos = torch.arange(1, len(x) + 1, dtype=torch.float64)
    # groups of equal values: the start of each run
    new = torch.ones(len(x), dtype=torch.bool)
    new[1:] = sorted_x[1:] != sorted_x[:-1]
    group = torch.cumsum(new.long(), 0) - 1
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, pos)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(pos))
    r[order] = (sums / counts)[group]
    return r


def spearman(a, b) -> float | None:
    """Spearman rank correlation of two 1-D tensors; None when either is constant (no ranking)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.pow(2).sum() * rb.pow(2).sum()).sqrt())
    return float((ra * rb).sum()) / den if den > 0 else None


def split_half(even: dict, odd: dict) -> dict[str, float]:
    """axis -> mean split-half Spearman over its rows, for the axes of `AXES` present with >= 3 units."""
    out = {}
    for axis in AXES:
        a, b = even.get(axis), odd.get(axis)
        if a is None or b is None or a.numel() == 0 or a.shape[-1] < MIN_UNITS:
            continue
        rows = [r for r in (spearman(x, y) for x, y in zip(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]),
                                                             strict=True)) if r is not None]  # fmt: skip
        if rows:
            out[axis] = round(sum(rows) / len(rows), 4)
    return out
