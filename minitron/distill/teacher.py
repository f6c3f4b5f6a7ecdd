"""Where the teacher's targets come from — a resident model or cached logits — and validation.

`ResidentTeacher` runs the frozen teacher on the micro-batch (logits [b, L, V]); `CachedTeacher`
reads the same blocks' top-k + tail bins from a `TeacherLogits` cache (ids [b, L, k], log-probs
[b, L, k + 1]) and never loads a model. `kd_loss` turns either into the summed divergence, and
`evaluate` computes validation KL and LM loss from either.
"""

from __future__ import annotations

import torch

from minitron import distributed as dist
from minitron.device import autocast
from minitron.evaluate.perplexity import kl_mask, score_blocks
from minitron.losses.divergence import DEFAULT_CHUNK, distill_loss, topk_distill_loss

__all__ = ["CachedTeacher", "ResidentTeacher", "as_teacher", "autocast", "evaluate", "kd_loss", "kl_mask", "logits_of",
           "reduce_sum"]


def logits_of(model, ids):
    return model(input_ids=ids, use_cache=False).logits  # [B, L, V]


def reduce_sum(t: torch.Tensor, device: str) -> torch.Tensor:
    """Sum a small CPU tensor over ranks (through `device`: NCCL only reduces GPU tensors)."""
    if dist.world_size() == 1:
        return t
    return dist.all_reduce_sum(t.to(device)).cpu()


class ResidentTeacher:
    """The teacher model beside the student: its logits for each micro-batch."""

    cached = False

    def __init__(self, model):
        self.model = model

    def output(self, split: str, idx: list[int], ids: torch.Tensor, device: str, autocast_dtype: str | None):
        with torch.no_grad(), autocast(device, autocast_dtype):
            return logits_of(self.model, ids)  # [b, L, V]


class CachedTeacher:
    """Cached teacher logits: the bins of blocks `idx`, read from disk (no model)."""

    cached = True

    def __init__(self, cache, eval_split: str = "train"):
        self.cache, self.eval_split = cache, eval_split

    def output(self, split: str, idx: list[int], ids: torch.Tensor, device: str, autocast_dtype: str | None):
        name = self.eval_split if split == "eval" else "train"
        top, log_p = self.cache.read(name, idx)  # [b, L, k], [b, L, k + 1]
        return top.to(device), log_p.to(device)


def as_teacher(teacher):
    return teacher if isinstance(teacher, (ResidentTeacher, CachedTeacher)) else ResidentTeacher(teacher)


def kd_loss(s_logits, target, mask=None, *, kind="forward-kl", temperature=1.0, top_k=None,
            chunk_size=DEFAULT_CHUNK, reduction="sum"):  # fmt: skip
    """The divergence to the teacher's `target`: logits [b, L, V] (overwritten by the gradient: the
    caller drops them) or cached bins (ids, log_p)."""
    if isinstance(target, tuple):
        ids, log_p = target
        return topk_distill_loss(s_logits, ids, log_p, mask, kind=kind, temperature=temperature, reduction=reduction,
                                 chunk_size=chunk_size)  # fmt: skip
    return distill_loss(s_logits, target, mask, kind=kind, temperature=temperature, top_k=top_k, reduction=reduction,
                        chunk_size=chunk_size, reuse_teacher=True)  # fmt: skip


def evaluate(teacher, student, blocks: torch.Tensor, *, micro_batch_size: int, device: str | None = None,
             autocast_dtype: str | None = None, chunk_size: int | None = DEFAULT_CHUNK,
             masks: torch.Tensor | None = None) -> dict:  # fmt: skip
    """Validation KL(teacher || student) per token and the student's LM loss per predicted token.

    `teacher`: a model, `ResidentTeacher` or `CachedTeacher` (then the KL is the top-k + tail one,
    on the cache's eval split). `masks` [n, L]: target tokens (chat data), None for all. `device`:
    where the blocks go (default: the student's).
    Blocks are dealt round-robin to ranks; every rank runs the same number of forwards (ranks short
    of data repeat a block with weight 0), which FSDP's collectives require. The loop is `minitron
    eval`'s (`minitron.evaluate.perplexity.score_blocks`): KL over the positions that predict a token.
    """
    source = as_teacher(teacher)
    was_training = student.training
    student.eval()
    got = score_blocks(student, blocks, batch_size=micro_batch_size, teacher=source, masks=masks,
                       chunk_size=chunk_size, autocast_dtype=autocast_dtype, shard=True, device=device)
    if was_training:
        student.train()
    out = {"kl": got.mean_kl, "loss": got.loss, "tokens": got.kl_tokens}
    if source.cached:
        out["kl_support"] = f"top-{source.cache.k}{'+tail' if source.cache.tail else ''}"
    return out
