"""Per-token KL and NLL on whole tensors, in nats (float32): the reference formulas.

The importance engine (`minitron.importance.engine`) computes `ref_logp` and `ref_p` once per chunk and
applies `kl_from_logp` / `nll_from_logp`; the chunked sums (`nll.py`) and the distillation objective
(`divergence.py`) are tested against `kl_per_token` / `nll_per_token`.
"""

from __future__ import annotations

import torch


def kl_per_token(ref_logits, logits):
    """[..., V] full-model and skipped-block logits -> [...] KL(p_ref || p) in nats (float32)."""
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    return kl_from_logp(ref_logp, ref_logp.exp(), torch.log_softmax(logits.float(), dim=-1))


def kl_from_logp(ref_logp, ref_p, logp):
    """KL(p_ref || p) from log-probabilities (the engine computes ref_logp and ref_p once per chunk)."""
    return (ref_p * (ref_logp - logp)).sum(dim=-1).clamp_min(0)


def nll_per_token(logits, targets):
    """[..., V] logits and [...] target ids -> [...] cross-entropy in nats."""
    return nll_from_logp(torch.log_softmax(logits.float(), dim=-1), targets)


def nll_from_logp(logp, targets):
    """[..., V] log-probabilities (possibly more positions than targets) -> [len(targets)] nats."""
    return -logp[: len(targets)].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
