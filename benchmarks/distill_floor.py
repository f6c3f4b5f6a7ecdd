"""The distillation recipe's floor (issue 18): students that start at or near the teacher, 40 steps.

On one trained teacher, with the demo's recipe (WSD, lr 2e-3, 4 warm-up steps, 8 x 128-token blocks,
AdamW beta1 0.7, intermediate-state weight 10): the teacher itself (nothing cut), then each axis of
the every-axis cut alone at that cut's level (the layers the default scores drop for depth), held-out
loss on the ablation's 32 x 128 tokens right after pruning and after 40 steps; and the attention-only
cut again at lr 5e-4.

    python benchmarks/distill_floor.py --teacher minitron/assets/demo/teacher --out docs/benchmarks/intermediate/floor-seed0.json

Single thread by default (`--threads`). One JSON document of rows, written as it goes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402
from hidden_basis import RECIPE, STEPS  # noqa: E402

# (row name, the cut, lr)
ROWS = [("none", None, None), *((axis, axis, None) for axis in A.ALL_AXES), ("depth", "depth", None),
        ("attention_heads", "attention_heads", 5e-4)]  # fmt: skip


def main(argv=None) -> int:
    ap = A.arg_parser(__doc__)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    b = A.Bench(args.teacher, {"calib": 32, "eval": 32, "draws": 1, "seeds": 0})
    row = A.Rows(args.out, "distill_floor.py", argv, args.teacher, b.loss(b.teacher))
    d = b.defaults(0)
    t, rot, comp, dropped = d.ranking, d.rotation, d.compensation, d.dropped
    for name, cut, lr in ROWS:
        shape = {cut: A.ALL_AXES[cut]} if cut in A.ALL_AXES else {}
        drop = dropped if cut == "depth" else []
        kept = [i for i in range(b.arch.num_layers) if i not in drop]
        recipe = {**RECIPE, "adam_beta1": 0.7, "intermediate_weight": 10.0, "layer_map": kept,
                  **({"lr": lr} if lr else {})}  # fmt: skip
        r = b.measure(t, shape, drop, steps=STEPS, recipe=recipe, rotation=rot if cut == "hidden_size" else None,
                      compensation=comp)  # fmt: skip
        row(cut=name, lr=recipe["lr"], shape=shape, dropped=list(drop), **r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
