"""Perplexity and loss of a causal LM on fixed-length blocks, and KL of its predictions to a teacher.

Definition (the one `minitron eval` reports): the text is tokenised without special tokens and cut
into non-overlapping blocks of `seq_len` tokens (the remainder dropped); each block is scored on its
own, with no context carried over from the previous block. In a block of L tokens, position l
predicts token l+1, so each block has L-1 predicted tokens. Then

    loss       = sum of -log q(x_{l+1} | x_{<=l}) over all predicted tokens of all blocks
                 / number of predicted tokens                                  (nats per token)
    perplexity = exp(loss)
    kl         = mean over all predicted positions of KL(p_teacher || q_model) of the next-token
                 distributions (forward KL, nats per token, the distillation objective)

The maths are pure functions of logits (`nll_sum`, with `nll_sum_reference` as its readable
reference); `score_blocks` is the thin loop that runs the model(s) over the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass
class BlockScores:
    """Running sums over the blocks scored so far."""

    nll: float = 0.0  # nats, summed over predicted tokens
    tokens: int = 0  # predicted tokens (blocks x (seq_len - 1))
    kl: float = 0.0  # nats, summed over the same positions
    blocks: int = 0

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def mean_kl(self) -> float:
        return self.kl / self.tokens if self.tokens else float("nan")

    def to_dict(self, with_kl: bool) -> dict:
        d = {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens, "blocks": self.blocks}
        if with_kl:
            d["kl"] = self.mean_kl
        return d


def kl_sum(logits: torch.Tensor, teacher_logits: torch.Tensor, chunk_size: int | None = None) -> float:
    """Sum over predicted positions of KL(teacher || model), both [B, L, V]; the last position predicts nothing.

    The chunked KL of `minitron.distill.losses` (the distillation objective), masked rather than sliced
    so that no [B, L, V] copy is made.
    """
    from minitron.distill.losses import kl_divergence

    mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)  # [B, L]
    mask[:, -1] = False
    rows = chunk_size or _chunk_rows(logits.shape[-1], logits.device)
    return float(kl_divergence(logits, teacher_logits, mask, chunk_size=rows, reduction="sum"))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits  # [B, L, V], fp32 (the model upcasts)


@torch.inference_mode()
def score_blocks(
    model,
    blocks: torch.Tensor,
    *,
    batch_size: int = 1,
    teacher=None,
    chunk_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> BlockScores:
    """Loss (and KL to `teacher` when given) of `model` over `blocks` [N, L], `batch_size` blocks per forward.

    Blocks are moved to the model's device batch by batch; `on_batch(n_blocks)` reports progress.
    """
    device = next(model.parameters()).device
    out = BlockScores()
    for a in range(0, blocks.shape[0], batch_size):
        ids = blocks[a : a + batch_size].to(device, non_blocking=True)  # [b, L]
        logits = _logits(model, ids)
        nll, n = nll_sum(logits, ids)
        out.nll += nll
        out.tokens += n
        out.blocks += ids.shape[0]
        if (
            teacher is not None and teacher is not model
        ):  # KL of the teacher to itself is 0: no second forward
            t_logits = _logits(teacher, ids.to(next(teacher.parameters()).device))
            out.kl += kl_sum(logits, t_logits.to(logits.device), chunk_size=chunk_size)
            del t_logits
        del logits
        if on_batch is not None:
            on_batch(ids.shape[0])
    return out
