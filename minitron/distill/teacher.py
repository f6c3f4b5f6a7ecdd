"""Where the teacher's targets come from — a resident model or cached logits — and validation.

`ResidentTeacher` runs the frozen teacher on the micro-batch (logits [b, L, V]); `CachedTeacher`
reads the same blocks' top-k + tail bins from a `TeacherLogits` cache (ids [b, L, k], log-probs
[b, L, k + 1]) and never loads a model. `kd_loss` turns either into the summed divergence, and
`evaluate` computes validation KL and LM loss from either.
"""

from __future__ import annotations

import contextlib

import torch

from minitron import distributed as dist
from minitron.losses.divergence import DEFAULT_CHUNK, distill_loss, lm_loss, topk_distill_loss


def autocast(device: str, dtype: str | None):
    if dtype in (None, "fp32", "float32"):
        return contextlib.nullcontext()
    from minitron.dtypes import torch_dtype

    return torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype(dtype))


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


def kl_mask(loss_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Positions whose *next* token is a target ([b, L] bool; the last position has none), or None (all)."""
    if loss_mask is None:
        return None
    m = torch.zeros_like(loss_mask, dtype=torch.bool)
    m[:, :-1] = loss_mask[:, 1:].bool()
    return m


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


@torch.no_grad()
def evaluate(teacher, student, blocks: torch.Tensor, *, micro_batch_size: int, device: str = "cpu",
             autocast_dtype: str | None = None, chunk_size: int | None = DEFAULT_CHUNK,
             masks: torch.Tensor | None = None) -> dict:  # fmt: skip
    """Validation KL(teacher || student) per token and the student's LM loss per predicted token.

    `teacher`: a model, `ResidentTeacher` or `CachedTeacher` (then the KL is the top-k + tail one,
    on the cache's eval split). `masks` [n, L]: target tokens (chat data), None for all.
    Blocks are dealt round-robin to ranks; every rank runs the same number of forwards (ranks short
    of data repeat a block with weight 0), which FSDP's collectives require.
    """
    source = as_teacher(teacher)
    was_training = student.training
    student.eval()
    r, w = dist.rank(), dist.world_size()
    mine = list(range(r, blocks.shape[0], w))
    most = -(-blocks.shape[0] // w)  # ceil: the blocks of the rank with the most
    n_batches = -(-most // micro_batch_size)
    sums = torch.zeros(4, dtype=torch.float64)  # kl sum, kl tokens, ce sum, ce tokens
    for b in range(n_batches):
        idx = mine[b * micro_batch_size : (b + 1) * micro_batch_size]
        weight = 1.0 if idx else 0.0
        idx = idx or [0]
        ids = blocks[idx].to(device)
        lm = None if masks is None else masks[idx].to(device)
        km = kl_mask(lm)
        target = source.output("eval", idx, ids, device, autocast_dtype)
        with autocast(device, autocast_dtype):
            s_logits = logits_of(student, ids)
        kl = kd_loss(s_logits, target, km, chunk_size=chunk_size)
        del target
        ce = lm_loss(s_logits, ids, lm, reduction="sum")
        del s_logits
        n_kl = ids.numel() if km is None else int(km.sum())
        n_ce = ids[:, 1:].numel() if lm is None else int(lm[:, 1:].sum())
        sums += weight * torch.tensor([float(kl), n_kl, float(ce), n_ce], dtype=torch.float64)
    sums = reduce_sum(sums, device)
    if was_training:
        student.train()
    out = {"kl": float(sums[0] / max(sums[1], 1)), "loss": float(sums[2] / max(sums[3], 1)), "tokens": int(sums[1])}
    if source.cached:
        out["kl_support"] = f"top-{source.cache.k}{'+tail' if source.cache.tail else ''}"
    return out
