"""The intermediate-state loss (`distill --intermediate-weight`) on the all-axes student (issue 18).

On one trained teacher, the student of `benchmarks/compensation.py` (calibration draw 0, the
all-axes cut ablation.ALL_AXES in the principal basis, Mamba signals `gated_out` / `gated`, the
2 layers the default layer scores drop, output projections refitted: today's defaults), distilled
with the demo's recipe (WSD, lr 2e-3, 4 warm-up steps, 8 x 128-token blocks) and the
intermediate-state loss at several weights; held-out loss on the ablation's 32 x 128 tokens:

    40 steps     weight 0 (logits only) and 10 on `--orders` data orders; 1, 3 and 30 on order 0
    longer runs  weight 0 and 10, order 0, `--long` total steps (each its own WSD run): how many
                 tokens reach 80 % of the gap
    passes       `--passes P`: weights 0 and 10 on every order, 40 x P steps over the very blocks the
                 40-step run reads (the same 40,960 tokens, P times)

    python benchmarks/intermediate.py --teacher minitron/assets/demo/teacher --out docs/benchmarks/intermediate/seed0.json
    python benchmarks/intermediate.py --teacher /work/artifacts/teacher-seed1 --out docs/benchmarks/intermediate/seed1.json

`--set adam_beta1=0.7` runs the same rows with a field of the recipe changed (session 11's momentum rows).

Single thread by default (`--threads`). One JSON document of rows, written as it goes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402
from hidden_basis import RECIPE, STEPS  # noqa: E402

from minitron.distill.sampling import Uniform  # noqa: E402


def main(argv=None) -> int:
    ap = A.arg_parser(__doc__)
    ap.add_argument("--orders", default="0,1,2", help="data orders (TrainConfig.seed) of weights 0 and 10")
    ap.add_argument("--weights", default="1,3,30", help="further weights, order 0 only")
    ap.add_argument("--long", default="80", help="total steps of the longer runs (weights 0 and 10, order 0)")
    ap.add_argument("--passes", default="", help="also train 40 x PASSES steps on the 40-step run's own blocks "
                    "(the same tokens, seen PASSES times; weights 0 and 10, every order), e.g. 2")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a TrainConfig field over the demo's recipe, e.g. adam_beta1=0.7 (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    b = A.Bench(args.teacher, {"calib": 32, "eval": 32, "draws": 1, "seeds": 0})
    row = A.Rows(args.out, "intermediate.py", argv, args.teacher, b.loss(b.teacher))

    d = b.defaults(0)
    t, rot, comp, dropped, kept = d.ranking, d.rotation, d.compensation, d.dropped, d.kept

    base = {**RECIPE, **dict(_field(kv) for kv in args.set)}
    row.doc["recipe"] = base

    def measure(weight: float, order: int, steps: int = STEPS, passes: int = 1):
        recipe = {**base, "intermediate_weight": weight, "layer_map": kept}
        g, every = recipe["micro_batch_size"], b.train_blocks
        if passes > 1:  # exactly the blocks the 40-step run of this order reads, `passes` times (new order each)
            seen = [i for s in range(STEPS) for i in Uniform(len(every), order).indices(s, g)]
            b.train_blocks, steps = every[seen], STEPS * passes
        try:
            r = b.measure(t, A.ALL_AXES, dropped, steps=steps, recipe=recipe, rotation=rot, compensation=comp, seed=order)
        finally:
            b.train_blocks = every
        gap = r["pruned"] - row.doc["teacher_loss"]
        row(weight=weight, order=order, steps=steps, passes=passes,
            tokens=(steps // passes) * g * A.SEQ_LEN, recovered=(r["pruned"] - r["distilled"]) / gap, **r)

    for order in (int(o) for o in args.orders.split(",")):
        for w in (0.0, 10.0):
            measure(w, order)
    for w in (float(x) for x in args.weights.split(",") if x):
        measure(w, 0)
    for steps in (int(s) for s in args.long.split(",") if s):
        for w in (0.0, 10.0):
            measure(w, 0, steps)
    for passes in (int(p) for p in args.passes.split(",") if p):
        for order in (int(o) for o in args.orders.split(",")):
            for w in (0.0, 10.0):
                measure(w, order, passes=passes)
    return 0


def _field(kv: str) -> tuple[str, object]:
    """FIELD=VALUE of --set, the value typed as the TrainConfig field's default."""
    from minitron.distill.trainer import TrainConfig

    key, sep, value = kv.partition("=")
    default = TrainConfig.__dataclass_fields__.get(key)
    if not sep or default is None:
        raise SystemExit(f"--set: expected FIELD=VALUE with a TrainConfig field, got {kv!r}")
    import dataclasses

    if default.default is None or default.default is dataclasses.MISSING:  # no typed default: a number
        return key, float(value) if any(c in value for c in ".e") else int(value)
    kind = type(default.default)
    if kind is bool:  # bool("False") would be True
        if value.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"--set: {key} takes true or false, got {value!r}")
        return key, value.lower() in ("true", "1")
    return key, kind(value)


if __name__ == "__main__":
    raise SystemExit(main())
