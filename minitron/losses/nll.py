"""Sums over a batch of blocks, a few rows at a time: next-token NLL and KL(teacher || model) in nats.

What `minitron eval` reports and the prune proxy ranks with. The KL is the distillation objective's own
chunked forward KL (`divergence.kl_divergence`), so eval, the proxy and distill agree to the bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minitron.losses.divergence import kl_divergence


def _chunk_rows(v: int, device: torch.device) -> int:
    """Rows of [rows, V] fp32 temporaries that stay small: 2^21 elements (8 MiB) on CPU, 2^26 on GPU."""
    return max(1, (1 << (21 if device.type == "cpu" else 26)) // v)


def nll_sum(
    logits: torch.Tensor, input_ids: torch.Tensor, chunk_elements: int | None = None
) -> tuple[float, int]:
    """(sum of next-token NLL in nats, number of predicted tokens) of `logits` [B, L, V] on `input_ids` [B, L].

    Fast path: fused fp32 `cross_entropy` over the logits as they are (no shifted copy of the
    [B, L, V] tensor: the targets are shifted instead, and the last position, which predicts nothing,
    is ignored), a few rows at a time so that its [rows, V] temporaries stay small — 2^21 elements
    (8 MiB, cache-sized) on CPU, 2^26 on GPU. Chunking changes only the summation order.
    """
    b, n, v = logits.shape
    target = torch.full_like(input_ids, -100).reshape(-1)  # [B*L]
    target.view(b, n)[:, :-1] = input_ids[:, 1:]
    x = logits.reshape(b * n, v)  # a view when contiguous (the model's logits are)
    rows = _chunk_rows(v, x.device) if chunk_elements is None else max(1, chunk_elements // v)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for a in range(0, b * n, rows):
        xa = x[a : a + rows]
        xa = xa if xa.dtype == torch.float32 else xa.float()
        total += F.cross_entropy(xa, target[a : a + rows], ignore_index=-100, reduction="sum")
    return float(total), b * (n - 1)


def nll_sum_reference(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[float, int]:
    """Readable reference of `nll_sum`: log-softmax, pick the next token's log-probability, negate, add."""
    logp = torch.log_softmax(logits.double(), dim=-1)  # [B, L, V]
    picked = logp[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
    return float(-picked.sum()), int(picked.numel())


def kl_sum(logits: torch.Tensor, teacher_logits: torch.Tensor, chunk_size: int | None = None) -> float:
    """Sum over predicted positions of KL(teacher || model), both [B, L, V]; the last position predicts nothing.

    The chunked KL of `minitron.losses.divergence` (the distillation objective), masked rather than sliced
    so that no [B, L, V] copy is made.
    """
    mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)  # [B, L]
    mask[:, -1] = False
    rows = chunk_size or _chunk_rows(logits.shape[-1], logits.device)
    return float(kl_divergence(logits, teacher_logits, mask, chunk_size=rows, reduction="sum"))
