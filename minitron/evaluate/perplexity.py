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

from minitron import distributed as dist
from minitron.device import autocast
from minitron.losses.divergence import kl_divergence, lm_loss, topk_distill_loss
from minitron.losses.nll import kl_sum, nll_sum
from minitron.progress import report


@dataclass
class BlockScores:
    """Running sums over the blocks scored so far."""

    nll: float = 0.0  # nats, summed over predicted tokens
    tokens: int = 0  # predicted tokens (blocks x (seq_len - 1))
    kl: float = 0.0  # nats, summed over the positions that predict those tokens
    kl_tokens: int = 0  # those positions (= tokens unless a KL was computed on masked data)
    blocks: int = 0

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def mean_kl(self) -> float:
        return self.kl / self.kl_tokens if self.kl_tokens else float("nan")

    def to_dict(self, with_kl: bool) -> dict:
        d = {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens, "blocks": self.blocks}
        if with_kl:
            d["kl"] = self.mean_kl
        return d


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits  # [B, L, V], fp32 (the model upcasts)


def _teacher_target(teacher, idx: list[int], ids: torch.Tensor, device, autocast_dtype):
    """The teacher's logits [b, L, V] on `device`, or a teacher source's output (cached top-k bins)."""
    if hasattr(teacher, "output") and not isinstance(teacher, torch.nn.Module):
        return teacher.output("eval", idx, ids, str(device), autocast_dtype)
    with autocast(str(device), autocast_dtype):
        return _logits(teacher, ids.to(next(teacher.parameters()).device)).to(device)


def _kl_sum(logits, target, kl_positions, chunk_size) -> float:
    if isinstance(target, tuple):  # cached top-k bins: the top-k + tail KL
        top, log_p = target
        if kl_positions is None:  # every position that predicts a token (not the last)
            kl_positions = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
            kl_positions[:, -1] = False
        return float(topk_distill_loss(logits, top, log_p, kl_positions, reduction="sum", chunk_size=chunk_size))
    if kl_positions is None:
        return kl_sum(logits, target, chunk_size=chunk_size)
    return float(kl_divergence(logits, target, kl_positions, chunk_size=chunk_size, reduction="sum"))


def score_blocks(
    model,
    blocks: torch.Tensor,
    *,
    batch_size: int = 1,
    teacher=None,
    masks: torch.Tensor | None = None,
    chunk_size: int | None = None,
    autocast_dtype: str | None = None,
    shard: bool = False,
    device=None,
    progress=None,
    stage: str = "eval",
) -> BlockScores:
    """Loss (and KL to `teacher` when given) of `model` over `blocks` [N, L], `batch_size` blocks per forward:
    the one teacher-vs-student evaluation loop (`minitron eval`, distillation's validation, the prune proxy).

    `teacher`: a model, or a teacher source (`minitron.distill.teacher`: `output(split, idx, ids, device,
    autocast_dtype)` giving logits or cached top-k bins, whose KL is then the top-k + tail one).
    `masks` [N, L]: target tokens (chat data): the loss counts the target tokens and the KL the positions
    that predict one; None: every predicted token and position. `shard`: deal the blocks round-robin to
    the torch.distributed ranks and sum the figures over them; every rank runs the same number of
    forwards (a rank short of blocks repeats one with weight 0), as FSDP's collectives require.
    Blocks are moved to `device` (default: the model's) batch by batch; `progress(stage, blocks_done, blocks)` reports
    after each batch (`minitron.progress`).
    """
    # inference mode is the faster (no version counters); FSDP2 updates its all-gather buffers in place
    # afterwards, which inference tensors forbid, so a sharded (training-time) evaluation takes no_grad
    with torch.no_grad() if shard else torch.inference_mode():
        return _score_blocks(model, blocks, batch_size, teacher, masks, chunk_size, autocast_dtype, shard, device,
                             progress, stage)


def _score_blocks(model, blocks, batch_size, teacher, masks, chunk_size, autocast_dtype, shard, device, progress,
                  stage) -> BlockScores:
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = (dist.rank(), dist.world_size()) if shard else (0, 1)
    mine = list(range(rank, blocks.shape[0], world))
    most = -(-blocks.shape[0] // world)  # ceil: the blocks of the rank with the most
    n_batches = -(-most // batch_size)
    sums = torch.zeros(4, dtype=torch.float64)  # nll, predicted tokens, kl, kl positions
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        weight = 1.0 if idx else 0.0
        idx = idx or [0]
        ids = blocks[idx].to(device, non_blocking=True)  # [b, L]
        targets = None if masks is None else masks[idx].to(device)
        with autocast(str(device), autocast_dtype):
            logits = _logits(model, ids)
        if targets is None:
            nll, n = nll_sum(logits, ids)
        else:
            nll, n = float(lm_loss(logits, ids, targets, reduction="sum")), int(targets[:, 1:].sum())
        kl, n_kl = 0.0, n
        if teacher is not None and teacher is not model:  # KL of the teacher to itself is 0: no second forward
            positions = kl_mask(targets)
            target = _teacher_target(teacher, idx, ids, device, autocast_dtype)
            kl = _kl_sum(logits, target, positions, chunk_size)
            n_kl = n if positions is None else int(positions.sum())
            del target
        del logits
        sums += weight * torch.tensor([nll, n, kl, n_kl], dtype=torch.float64)
        report(progress, stage, min(len(mine), (b + 1) * batch_size), len(mine))
    if shard and world > 1:
        sums = dist.all_reduce_sum(sums.to(device)).cpu()  # through the device: NCCL reduces GPU tensors only
    return BlockScores(nll=float(sums[0]), tokens=int(sums[1]), kl=float(sums[2]), kl_tokens=int(sums[3]),
                       blocks=blocks.shape[0] if shard else len(mine))


def kl_mask(loss_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Positions whose *next* token is a target ([b, L] bool; the last position has none), or None (all)."""
    if loss_mask is None:
        return None
    m = torch.zeros_like(loss_mask, dtype=torch.bool)
    m[:, :-1] = loss_mask[:, 1:].bool()
    return m
