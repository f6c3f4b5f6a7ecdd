"""Learning-rate schedules: linear warmup, then wsd (warmup-stable-decay), cosine or constant.

`lr_at(step, ...)` is a pure function of the optimiser step (0-based: the LR used *for* that step),
so a resumed run recomputes exactly the LR it would have used; `Schedule` applies it to an
optimiser and carries its one piece of state (the step) in checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("wsd", "cosine", "constant")


def lr_at(step: int, total: int, *, lr: float, min_lr: float = 0.0, warmup: int = 0, kind: str = "wsd",
          decay_fraction: float = 0.2) -> float:  # fmt: skip
    """The LR of optimiser step `step` (0 <= step < total).

    warmup: lr * (step + 1) / warmup for the first `warmup` steps.
    wsd: constant lr, then a linear decay to min_lr over the last `decay_fraction` of the steps
         (the WSD schedule of MiniCPM, also used for Minitron-style distillation).
    cosine: lr -> min_lr along half a cosine over the steps after warmup.
    constant: lr after warmup.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}")
    if step < warmup:
        return lr * (step + 1) / warmup
    if kind == "constant":
        return lr
    if kind == "cosine":
        span = max(1, total - warmup)
        frac = min(1.0, (step - warmup) / max(1, span - 1)) if span > 1 else 1.0
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))
    decay_steps = max(1, round(decay_fraction * (total - warmup)))
    decay_start = total - decay_steps
    if step < decay_start:
        return lr
    frac = (step - decay_start + 1) / decay_steps
    return lr + (min_lr - lr) * frac


@dataclass
class Schedule:
    total: int
    lr: float
    min_lr: float = 0.0
    warmup: int = 0
    kind: str = "wsd"
    step: int = 0

    def current(self) -> float:
        return lr_at(min(self.step, self.total - 1), self.total, lr=self.lr, min_lr=self.min_lr, warmup=self.warmup,
                     kind=self.kind)  # fmt: skip

    def apply(self, optimizer) -> float:
        """Set the LR of the coming step on every parameter group; return it."""
        value = self.current()
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "total": self.total, "lr": self.lr, "min_lr": self.min_lr,
                "warmup": self.warmup, "kind": self.kind}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
