"""Layer importance: how much the model's output changes when one block is skipped.

Metrics (pure functions, per token; larger = more important):

    kl      KL(p_full || p_skipped) of the next-token distributions (default)
    mse     mean over the vocabulary of (logits_skipped - logits_full)^2
    loss    increase of the next-token cross-entropy (clamped at 0 in the final score)
    cosine  1 - cos(block input, block output): free, from the full pass alone

`minitron.importance.engine.layer_scores()` is the library entry point (prune's `--iterative` depth pruning re-scores with it
after each removal). It does not pay N+1 full passes: the full pass runs once, and the input of every
block is carried as the start of a "branch" in which that block is skipped; each later block is then
applied to the live branches. Block i's branch costs only the suffix i+1..N-1 (N + N(N-1)/2 block
evaluations in all instead of N(N+1)), and the head once per branch. See `engine.py`.
"""

from __future__ import annotations

import torch

LAYER_METRICS = ("kl", "mse", "loss", "cosine")
LOGIT_METRICS = ("kl", "mse", "loss")


def mse_per_token(ref_logits, logits):
    """[..., V] -> [...] mean squared difference of the logits."""
    return (logits.float() - ref_logits.float()).pow(2).mean(dim=-1)


def cosine_distance(x, y):
    """[..., C] block input and output -> [...] 1 - cos(x, y), in [0, 2]."""
    cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1, eps=1e-8)
    return (1.0 - cos).clamp_min(0)


def finalize_layer_scores(stats, num_layers: int, skip=frozenset()) -> dict:
    """Partial sums of the engine -> {metric: [num_layers] float32} for the metrics collected."""
    tokens = float(stats["tokens"].item()) if "tokens" in stats else 0.0
    pred = float(stats["pred_tokens"].item()) if "pred_tokens" in stats else 0.0
    out = {}
    if "layer_cosine" in stats:
        out["cosine"] = stats["layer_cosine"] / max(tokens, 1.0)
    if "layer_kl" in stats:
        out["kl"] = stats["layer_kl"] / max(tokens, 1.0)
        out["mse"] = stats["layer_mse"] / max(tokens, 1.0)
        out["loss"] = ((stats["layer_loss"] - stats["ref_loss"]) / max(pred, 1.0)).clamp_min(0)
    for name, t in out.items():
        t = t.clone()
        for i in skip:
            t[i] = 0.0
        out[name] = t.float()
    return out
