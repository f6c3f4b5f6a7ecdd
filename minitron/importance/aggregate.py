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
    """Named float64 partial sums; `add` per batch, `all_reduce` across ranks, then read them.

    With `split`, every sum added while `odd` is set (the engine sets it for the odd-numbered
    micro-batches) is also kept apart, so that `halves()` gives the statistics of the even and of the
    odd batches: the split-half stability of the rankings (`minitron.importance.stability`). The full
    sums are the same either way.
    """

    def __init__(self, split: bool = False):
        self.sums: dict = {}
        self.split = split
        self.odd = False
        self.half: dict = {}  # the odd batches' share of each sum

    def add(self, name: str, partial) -> None:
        partial = partial.detach().double().cpu()
        _accumulate(self.sums, name, partial)
        if self.split and self.odd:
            _accumulate(self.half, name, partial)

    def halves(self) -> tuple[Stats, Stats]:
        """(even batches, odd batches) as two `Stats` of their own."""
        even, odd = Stats(), Stats()
        for name, total in self.sums.items():
            part = self.half.get(name)
            odd.sums[name] = part.clone() if part is not None else total.new_zeros(total.shape)
            even.sums[name] = total - odd.sums[name]
        return even, odd

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
        for d in (self.sums, self.half) if self.split else (self.sums,):
            for name, shape in sorted(names.items()):
                t = d.get(name)
                if t is None:
                    t = torch.zeros(shape, dtype=torch.float64)
                d[name] = all_reduce_sum(t.contiguous())


def _accumulate(d: dict, name: str, partial) -> None:
    if name in d:
        d[name] += partial
    else:
        d[name] = partial.clone()
