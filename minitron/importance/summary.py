"""Readable facts about a set of scores: least important layers, how concentrated each axis is."""

from __future__ import annotations

from minitron.importance.scores import MOE_AXES, WIDTH_AXES
from minitron.models.layer_types import layer_name


def gini(values) -> float:
    """Gini coefficient of non-negative values: 0 = all equal, -> 1 = all mass in one unit."""
    import torch

    v = values.double().flatten().sort().values
    n = v.numel()
    total = float(v.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float((2 * (ranks * v).sum() / (n * total)) - (n + 1) / n)


def top_share(values, fraction: float = 0.1) -> float:
    """Share of the total held by the top `fraction` of units (at least one unit)."""
    v = values.double().flatten()
    total = float(v.sum())
    if v.numel() == 0 or total <= 0:
        return 0.0
    k = max(1, round(fraction * v.numel()))
    return float(v.topk(k).values.sum() / total)


def concentration(tensors: dict) -> dict:
    """Per width axis (and layers): units, top-10% share and Gini. Per-layer axes are pooled per row
    (each row normalised to sum 1 first, so every layer weighs the same)."""
    out = {}
    for name in (*WIDTH_AXES, *MOE_AXES, "layers"):
        t = tensors.get(name)
        if t is None or t.numel() == 0:
            continue
        rows = t.double().reshape(-1, t.shape[-1])
        shares = [top_share(r) for r in rows]
        ginis = [gini(r) for r in rows]
        out[name] = {
            "units": int(t.shape[-1]),
            "rows": int(rows.shape[0]),
            "top10_share": round(sum(shares) / len(shares), 4),
            "gini": round(sum(ginis) / len(ginis), 4),
        }
    return out


def least_important_layers(layers, pattern: str, n: int = 5) -> list[dict]:
    order = layers.double().argsort().tolist()[:n]
    return [{"layer": i, "type": layer_name(pattern[i]), "score": float(layers[i])} for i in order]
