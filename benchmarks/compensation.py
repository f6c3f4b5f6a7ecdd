"""Least-squares compensation of the output projections (`prune --compensation`) vs the plain cut (issue 18).

On one trained teacher, with the ablation's calibration draws (32 blocks x 128 tokens) and held-out
set (32 blocks x 128 tokens), in memory (`make_plan` + `prune_model`), the defaults otherwise
(hidden cut in the principal basis, Mamba signals `gated_out` / `gated`, 2 layers dropped by the
default layer scores):

    draw 0   each axis alone at 50 % (FFN, attention heads, Mamba heads, Mamba head dim; hidden with pca):
             plain cut vs compensated, loss right after pruning
             the all-axes cut (ablation.ALL_AXES): plain vs the ridges 1e-3, 1e-2 (the default), 1e-1;
             plain and default distilled with the demo's recipe (40 steps of 8 x 128 tokens, WSD,
             lr 2e-3, 4 warm-up steps) on `--orders` data orders
             random ranking (seeds 0-2: every axis and the dropped layers random; channels, as the
             ablation's baseline), plain and compensated
    draw N   the all-axes cut, plain vs compensated (the calibration noise)

    python benchmarks/compensation.py --teacher minitron/assets/demo/teacher --out docs/benchmarks/compensation/seed0.json
    python benchmarks/compensation.py --teacher /work/artifacts/teacher-seed1 --out docs/benchmarks/compensation/seed1.json

Single thread by default (`--threads`). One JSON document of rows, printed as it goes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402
from hidden_basis import RECIPE, STEPS  # noqa: E402
from quality_scores import random_scores  # noqa: E402

from minitron.prune.compensation import RIDGE, Compensation  # noqa: E402
from minitron.prune.rotation import from_covariance  # noqa: E402
from minitron.prune.select import least_important  # noqa: E402

RIDGES = (1e-3, 1e-2, 1e-1)


def main(argv=None) -> int:
    ap = A.arg_parser(__doc__)
    ap.add_argument("--draws", default="0,1")
    ap.add_argument("--orders", default="0,1,2", help="data orders of the distillation (TrainConfig.seed)")
    ap.add_argument("--seeds", type=int, default=3, help="random rankings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    draws = [int(d) for d in args.draws.split(",")]
    b = A.Bench(args.teacher, {"calib": 32, "eval": 32, "draws": max(draws) + 1, "seeds": args.seeds})
    row = A.Rows(args.out, "compensation.py", argv, args.teacher, b.loss(b.teacher))

    for d in draws:
        t = b.scores(d, grams=True)  # every candidate signal, and the statistics of the refit
        rot = from_covariance(b.arch, t["hidden_covariance"])
        comp = Compensation(b.arch, t)
        dropped = least_important(t["layers"], b.arch, {"*": 1})[: A.DROP_ALL]
        if d != draws[0]:
            for name, c in (("plain", None), ("compensated", comp)):
                row(cut="all", draw=d, compensation=name, **b.measure(t, A.ALL_AXES, dropped, rotation=rot, compensation=c))
            continue
        a = b.arch
        for axis, shape in (("ffn", {"ffn_size": a.intermediate_size // 2}),
                            ("attention_heads", {"attention_heads": a.num_attention_heads // 2}),
                            ("mamba_heads", {"mamba_heads": a.mamba_num_heads // 2}),
                            ("mamba_head_dim", {"mamba_head_dim": a.mamba_head_dim // 2}),
                            ("hidden", {"hidden_size": a.hidden_size // 2})):
            for name, c in (("plain", None), ("compensated", comp)):
                row(cut=axis, level="50%", draw=d, compensation=name, **b.measure(t, shape, rotation=rot, compensation=c))
        for ridge in RIDGES:
            if ridge != RIDGE:
                row(cut="all", draw=d, compensation=f"ridge {ridge:g}",
                    **b.measure(t, A.ALL_AXES, dropped, rotation=rot, compensation=Compensation(b.arch, t, ridge=ridge)))
        for order in (int(o) for o in args.orders.split(",")):
            for name, c in (("plain", None), ("compensated", comp)):
                row(cut="all", draw=d, compensation=name, order=order,
                    **b.measure(t, A.ALL_AXES, dropped, steps=STEPS, recipe=RECIPE, rotation=rot, compensation=c, seed=order))
        for s in range(args.seeds):
            rs = random_scores(b.arch, seed=s)
            order = least_important(rs["layers"], b.arch, {"*": 1})[: A.DROP_ALL]
            for name, c in (("plain", None), ("compensated", comp)):
                row(cut="all", draw=d, ranking="random", seed=s, compensation=name,
                    **b.measure({**t, **rs}, A.ALL_AXES, order, compensation=c))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
