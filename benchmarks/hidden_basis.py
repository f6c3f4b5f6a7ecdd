"""Hidden cut in the principal basis (`prune --hidden-basis pca`) vs hidden-channel selection (issue 18).

On one trained teacher, with the ablation's calibration draw 0 (32 blocks x 128 tokens) and held-out
set (32 blocks x 128 tokens), in memory (`make_plan` + `prune_model`):

    hidden alone at 25 % and 50 %      channels vs pca, loss right after pruning
    the all-axes cut (ablation.ALL_AXES, 2 layers dropped by the default layer scores):
        channels / pca, each with the default Mamba signals and with `gated_out` + `gated`;
        loss after pruning and after the demo recipe's distillation (40 steps of 8 x 128 tokens,
        WSD, lr 2e-3, 4 warm-up steps; the same data order for every student)
        random ranking (seeds 0-2: every axis and the dropped layers random), pruned only

    python benchmarks/hidden_basis.py --teacher minitron/assets/demo/teacher --out hb-seed0.json
    python benchmarks/hidden_basis.py --teacher /work/artifacts/teacher-seed1 --out hb-seed1.json

Single thread by default (`--threads`). One JSON document of rows, printed as it goes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402
from quality_scores import random_scores  # noqa: E402

from minitron.prune.rotation import from_covariance  # noqa: E402
from minitron.prune.select import least_important  # noqa: E402

RECIPE = {"lr": 2e-3, "schedule": "wsd", "warmup_steps": 4, "micro_batch_size": 8}  # the demo's (sweep's best)
STEPS = 40
RECIPE_40 = {**RECIPE, "adam_beta1": 0.7, "intermediate_weight": 10.0}  # the demo's recipe since session 11


def main(argv=None) -> int:
    ap = A.arg_parser(__doc__)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--draws", default="0", help="calibration draws, e.g. 0,1: draw 0 gets every row, the others "
                                                 "the all-axes cut right after pruning (the calibration noise)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    draws = [int(d) for d in args.draws.split(",")]
    b = A.Bench(args.teacher, {"calib": 32, "eval": 32, "draws": max(draws) + 1, "seeds": args.seeds})
    doc = {"teacher": str(args.teacher), "teacher_loss": b.loss(b.teacher), "rows": []}
    if args.out.is_file():
        doc["rows"] = json.loads(args.out.read_text())["rows"]  # add to an earlier run's rows

    def row(**r):
        doc["rows"].append(r)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        A.log(json.dumps(r))

    for d in draws:
        t = b.scores(d)
        rot = from_covariance(b.arch, t["hidden_covariance"])
        # session 7's comparison; since 0.2 these are the defaults, so both rows rank the same
        gated = {**t, "mamba_heads": t["candidate.mamba_heads.gated_out"],
                 "mamba_head_dim": t["candidate.mamba_head_dim.gated"]}
        dropped = least_important(t["layers"], b.arch, {"*": 1})[: A.DROP_ALL]
        if d == 0:
            draw0(b, args, t, rot, gated, dropped, row)
            continue
        for basis, r in (("channels", None), ("pca", rot)):
            for mamba, ranking in (("default", t), ("gated", gated)):
                row(cut="all", basis=basis, mamba=mamba, draw=d, **b.measure(ranking, A.ALL_AXES, dropped, rotation=r))
    return 0


def draw0(b, args, t, rot, gated, dropped, row) -> None:
    """Every row of calibration draw 0: hidden alone, the all-axes cut distilled, and random."""
    h = b.arch.hidden_size
    for level, keep in (("25%", 0.75), ("50%", 0.5)):
        shape = {"hidden_size": int(h * keep)}
        for basis, r in (("channels", None), ("pca", rot)):
            row(cut="hidden", level=level, basis=basis, mamba="default", **b.measure(t, shape, rotation=r))
    for basis, r in (("channels", None), ("pca", rot)):
        for mamba, ranking in (("default", t), ("gated", gated)):
            row(cut="all", basis=basis, mamba=mamba, draw=0,
                **b.measure(ranking, A.ALL_AXES, dropped, steps=args.steps, recipe=RECIPE, rotation=r))
    for s in range(args.seeds):
        rs = random_scores(b.arch, seed=s)
        order = least_important(rs["layers"], b.arch, {"*": 1})[: A.DROP_ALL]
        row(cut="all", basis="channels", mamba="random", seed=s, **b.measure({**t, **rs}, A.ALL_AXES, order))


if __name__ == "__main__":
    raise SystemExit(main())
