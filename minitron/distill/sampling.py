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


class Uniform:
    """The order without a mix: every block once per epoch (`step_indices`)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def indices(self, step: int, global_batch: int) -> list[int]:
        return step_indices(step, self.n, global_batch, self.seed)


class Mix:
    """A weighted mix of sources: position p of the stream draws its source by weight, then takes that
    source's next block (each source runs through its own epochs of permutations).

    A pure function of (seed, position) like `step_indices`: draws are made `SPAN` positions at a time
    from a generator seeded by (seed, span number), and a source's occurrence count before a position
    comes from per-span counts, so a resumed run (or another world size) reads the same blocks.
    `sources`: [{"start", "blocks"}] of each source in the block tensor; `weights` sum to 1.
    """

    SPAN = 4096

    def __init__(self, sources: list[dict], weights: list[float], seed: int):
        self.names = [str(s.get("path", i)) for i, s in enumerate(sources)]
        self.starts = [int(s["start"]) for s in sources]
        self.sizes = [int(s["blocks"]) for s in sources]
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.seed = seed
        self._draws: dict[int, torch.Tensor] = {}
        self._before: list[torch.Tensor] = [torch.zeros(len(sources), dtype=torch.long)]  # counts before span i
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def _span(self, i: int) -> torch.Tensor:
        if i not in self._draws:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * i + 17)
            self._draws[i] = torch.multinomial(self.weights, self.SPAN, replacement=True, generator=g)
        return self._draws[i]

    def counts_before(self, pos: int) -> torch.Tensor:
        """How many of positions 0 .. pos-1 drew each source: the realised mix."""
        span, i = divmod(pos, self.SPAN)
        while len(self._before) <= span:
            j = len(self._before) - 1
            self._before.append(self._before[j] + torch.bincount(self._span(j), minlength=len(self.sizes)))
        return self._before[span] + torch.bincount(self._span(span)[:i], minlength=len(self.sizes))

    def _block(self, src: int, occurrence: int) -> int:
        epoch, j = divmod(occurrence, self.sizes[src])
        key = (src, epoch)
        if key not in self._orders:
            self._orders[key] = epoch_order(self.sizes[src], epoch, self.seed + 101 * (src + 1))
        return self.starts[src] + int(self._orders[key][j])

    def indices(self, step: int, global_batch: int) -> list[int]:
        first = step * global_batch
        seen = self.counts_before(first).clone()
        out = []
        for pos in range(first, first + global_batch):
            src = int(self._span(pos // self.SPAN)[pos % self.SPAN])
            out.append(self._block(src, int(seen[src])))
            seen[src] += 1
        return out

    def realised(self, steps: int, global_batch: int) -> list[float]:
        c = self.counts_before(steps * global_batch).double()
        return (c / c.sum().clamp(min=1)).tolist()
