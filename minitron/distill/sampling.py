"""Which blocks each optimiser step reads, and which of them each rank takes.

The order is a pure function of (seed, step): a resumed run, or a run with another number of
processes, reads exactly the same global batches.
"""

from __future__ import annotations

import torch


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits the `n` blocks: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def step_indices(step: int, n: int, global_batch: int, seed: int) -> list[int]:
    """Block indices of optimiser step `step` (0-based): positions step*G .. step*G+G-1 of the stream of
    epochs. A pure function of the step, so a resumed run reads exactly the data it would have read."""
    out, cache = [], {}
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, i = divmod(pos, n)
        if epoch not in cache:
            cache[epoch] = epoch_order(n, epoch, seed)
        out.append(int(cache[epoch][i]))
    return out


def rank_micro_batches(indices: list[int], micro: int, rank: int, world: int) -> list[list[int]]:
    """This rank's contiguous share of a global batch, cut into micro-batches."""
    share = len(indices) // world
    mine = indices[rank * share : (rank + 1) * share]
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]
