"""Aggregation of per-token unit values into one score per unit, across batches and processes.

Minitron reduces an activation statistic in two steps: over the sequence (per sample), then over the
batch. Both reductions are `mean` or `l2` (the Euclidean norm); the default, which worked best in the
Minitron paper, is mean over the sequence and L2 over the batch (`mean,l2`).

The batch reduction is kept as a running *sum* (of per-sample values for `mean`, of their squares for
`l2`) in float64 plus a sample count, so that partial statistics of several batches, or of several
torchrun ranks, add up exactly and are finalised once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.errors import InputError

REDUCTIONS = ("mean", "l2")


@dataclass(frozen=True)
class Aggregation:
    seq: str = "mean"  # reduction over the tokens of one sample
    batch: str = "l2"  # reduction over samples

    @classmethod
    def parse(cls, text: str, flag: str = "--aggregation") -> Aggregation:
        """`"mean,l2"` -> Aggregation(seq="mean", batch="l2")."""
        parts = [p.strip().lower() for p in str(text).split(",")]
        if len(parts) != 2 or any(p not in REDUCTIONS for p in parts):
            raise InputError(
                f"expected SEQ,BATCH with each of {', '.join(REDUCTIONS)} (e.g. mean,l2), got {text!r}", flag=flag
            )
        return cls(seq=parts[0], batch=parts[1])

    def __str__(self) -> str:
        return f"{self.seq},{self.batch}"


def reduce_seq(values, how: str):
    """[B, T, U] per-token unit values -> [B, U] per-sample values."""
    if how == "mean":
        return values.mean(dim=1)
    if how == "l2":
        return values.pow(2).sum(dim=1).sqrt()
    raise ValueError(how)


def batch_partial(per_sample, how: str):
    """[B, U] per-sample values -> [U] float64 partial sum that `finalize_batch` turns into scores."""
    per_sample = per_sample.double()
    if how == "mean":
        return per_sample.sum(dim=0)
    if how == "l2":
        return per_sample.pow(2).sum(dim=0)
    raise ValueError(how)


def finalize_batch(partial, n_samples: float, how: str):
    """The partial sum of all samples (all ranks) -> float64 scores."""
    if how == "mean":
        return partial / max(n_samples, 1.0)
    if how == "l2":
        return partial.clamp_min(0).sqrt()
    raise ValueError(how)


def aggregate(values, agg: Aggregation):
    """Reference: [B, T, U] per-token values of all samples at once -> [U] scores (float64)."""
    return finalize_batch(batch_partial(reduce_seq(values, agg.seq), agg.batch), values.shape[0], agg.batch)


class Stats:
    """Named float64 partial sums; `add` per batch, `all_reduce` across ranks, then read them."""

    def __init__(self):
        self.sums: dict = {}

    def add(self, name: str, partial) -> None:
        partial = partial.detach().double().cpu()
        if name in self.sums:
            self.sums[name] += partial
        else:
            self.sums[name] = partial.clone()

    def __contains__(self, name: str) -> bool:
        return name in self.sums

    def __getitem__(self, name: str):
        return self.sums[name]

    def all_reduce(self, names) -> None:
        """Sum every statistic over the torchrun ranks (a no-op in one process).

        `names` is the complete, rank-independent list of statistics: a rank that saw no sample for
        one of them contributes zeros of the same shape (shapes come from `names`' values).
        """
        import torch

        from minitron.distributed import all_reduce_sum, is_initialized

        if not is_initialized():
            return
        for name, shape in sorted(names.items()):
            t = self.sums.get(name)
            if t is None:
                t = torch.zeros(shape, dtype=torch.float64)
            self.sums[name] = all_reduce_sum(t.contiguous())
