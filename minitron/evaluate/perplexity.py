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

The maths are pure functions of logits (`minitron.losses.nll.nll_sum`, with `nll_sum_reference` as its
readable reference); `score_blocks` is the thin loop that runs the model(s) over the blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minitron.losses.nll import kl_sum, nll_sum
from minitron.progress import report


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
    progress=None,
    stage: str = "eval",
) -> BlockScores:
    """Loss (and KL to `teacher` when given) of `model` over `blocks` [N, L], `batch_size` blocks per forward.

    Blocks are moved to the model's device batch by batch; `progress(stage, blocks_done, blocks)` reports
    after each batch (`minitron.progress`).
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
        report(progress, stage, out.blocks, blocks.shape[0])
    return out
