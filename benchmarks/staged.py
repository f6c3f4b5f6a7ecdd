"""Pruning in stages inside the 40-step budget vs one cut (issue 18).

On one trained teacher, the every-axis student of `benchmarks/intermediate.py` (calibration draw 0,
ablation.ALL_AXES in the principal basis, Mamba signals `gated_out` / `gated`, output projections
refitted, 2 layers dropped by the default layer scores), distilled with the demo's recipe (WSD, lr
2e-3, 4 warm-up steps, AdamW beta1 0.7, intermediate-state weight 10, 8 x 128-token blocks), against
the same 40 steps spent on a gradual cut: cut part of the way, distil some steps, re-score the
distilled student on the same calibration blocks, cut again, ..., the last cut reaching the same
shape and the last stage running to step 40. Every run reads exactly the blocks of the one-cut run
of its data order, step for step (stage k reads steps lo..hi of that stream); each stage is its own
WSD run over its steps. Held-out loss on the ablation's 32 x 128 tokens.

A schedule is `one` or `F@S,...`: cut F of the way from the teacher's shape to the target (widths
rounded to the architecture's multiples; layers dropped: round(F x 2)) at step 0 and train to step S,
then the next entry, then the full cut to step 40. `0.5@10`: halfway, 10 steps, full cut, 30 steps.

    python benchmarks/staged.py --teacher minitron/assets/demo/teacher --out docs/benchmarks/staged/seed0.json
    python benchmarks/staged.py --teacher /work/artifacts/teacher-seed1 --out docs/benchmarks/staged/seed1.json

Single thread by default (`--threads`). One JSON document of rows, written as it goes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402
from hidden_basis import RECIPE_40, STEPS  # noqa: E402

from minitron.distill.sampling import Uniform, epoch_order  # noqa: E402
from minitron.distill.trainer import quick_distill  # noqa: E402
from minitron.importance.aggregate import Aggregation  # noqa: E402
from minitron.importance.engine import InMemorySource  # noqa: E402
from minitron.models.architecture import Architecture  # noqa: E402
from minitron.prune.apply import prune_model  # noqa: E402
from minitron.prune.compensation import Compensation  # noqa: E402
from minitron.prune.rotation import from_covariance  # noqa: E402
from minitron.prune.select import Shape, least_important, make_plan  # noqa: E402
from minitron.recipes.score import score_tensors  # noqa: E402

# the multiple each width is rounded to at an intermediate cut (Mamba heads: whole heads per group)
MULTIPLE = {"hidden_size": 16, "ffn_size": 32, "attention_heads": 2, "mamba_heads": None, "mamba_head_dim": 1}


def parse_schedule(text: str) -> list[tuple[float, int]]:
    """`one` -> [(1, 40)]; `0.5@10` -> [(0.5, 10), (1, 40)]."""
    if text == "one":
        return [(1.0, STEPS)]
    out = []
    try:
        for part in text.split(","):
            f, _, s = part.partition("@")
            out.append((float(f), int(s)))
    except ValueError:
        raise SystemExit(f"--schedules: {text!r}: expected one or F@S,... (e.g. 0.5@10)") from None
    fracs, steps = [f for f, _ in out], [s for _, s in out]
    if not (all(0 < f < 1 for f in fracs) and fracs == sorted(fracs) and steps == sorted(steps)
            and 0 < steps[0] and steps[-1] < STEPS):  # fmt: skip
        raise SystemExit(f"--schedules: {text!r}: fractions in (0, 1) and steps in (0, {STEPS}), both increasing")
    return [*out, (1.0, STEPS)]


def partway(arch, frac: float) -> dict:
    """The shape `frac` of the way from the teacher's widths to ALL_AXES."""
    full = {"hidden_size": arch.hidden_size, "ffn_size": arch.intermediate_size,
            "attention_heads": arch.num_attention_heads, "mamba_heads": arch.mamba_num_heads,
            "mamba_head_dim": arch.mamba_head_dim}  # fmt: skip
    shape = {}
    for key, target in A.ALL_AXES.items():
        m = MULTIPLE[key] or arch.n_groups
        shape[key] = int(m * round((full[key] - frac * (full[key] - target)) / m)) if frac < 1 else target
    return shape


def main(argv=None) -> int:
    ap = A.arg_parser(__doc__)
    ap.add_argument("--orders", default="0,1,2", help="data orders (TrainConfig.seed)")
    ap.add_argument("--schedules", default="one;0.5@10;0.5@20;0.33@5,0.67@10",
                    help="';'-separated schedules: one, or F@S,... (see the module's text)")
    args = ap.parse_args(argv)
    orders = A.int_list("--orders", args.orders)
    names = ["one", *(s for s in args.schedules.split(";") if s != "one")]  # the one cut first: its gap is the gap
    schedules = [(s, parse_schedule(s)) for s in names]
    torch.set_num_threads(args.threads)
    b = A.Bench(args.teacher, {"calib": 32, "eval": 32, "draws": 1, "seeds": 0})
    row = A.Rows(args.out, "staged.py", argv, args.teacher, b.loss(b.teacher))
    row.doc["recipe"] = RECIPE_40

    def cut(model, arch, shape: dict, drop: int):
        t, _, _ = score_tensors(InMemorySource(model), arch, b.calib[0], agg=Aggregation.parse("mean,l2"),
                                batch_size=8, layer_metric="kl", all_metrics=True, grams=True)  # fmt: skip
        dropped = least_important(t["layers"], arch, {"*": 1})[:drop] if drop else []
        plan = make_plan(arch, Shape(**shape), t, dropped, from_covariance(arch, t["hidden_covariance"]),
                         Compensation(arch, t))  # fmt: skip
        return prune_model(model, plan), dropped

    def train(student, kept: list[int], blocks: torch.Tensor, steps: int) -> None:
        for p in student.parameters():
            p.requires_grad_(True)
        torch.manual_seed(0)
        recipe = {**RECIPE_40, "layer_map": kept, "warmup_steps": min(RECIPE_40["warmup_steps"], steps)}
        quick_distill(b.teacher, student, blocks, b.eval_blocks[:1], steps, **recipe)
        student.eval()

    one_shot = float("nan")
    every, g = b.train_blocks, RECIPE_40["micro_batch_size"]
    for order in orders:
        stream = [i for s in range(STEPS) for i in Uniform(len(every), order).indices(s, g)]
        for name, stages in schedules:
            model, arch, kept, lo, steps = b.teacher, b.arch, list(range(b.arch.num_layers)), 0, []
            for frac, hi in stages:
                drop = round(frac * A.DROP_ALL) - (b.arch.num_layers - len(kept))
                model, dropped = cut(model, arch, partway(b.arch, frac), drop)
                kept = [k for i, k in enumerate(kept) if i not in dropped]  # student layer -> teacher layer
                pruned = b.loss(model)
                # position i of a stage's stream reads block stream[lo*g + i]: undo the sampler's permutation
                want = torch.tensor(stream[lo * g : hi * g])
                idx = torch.empty_like(want)
                idx[epoch_order(len(want), 0, 0)] = want
                train(model, kept, every[idx], hi - lo)
                steps.append({"frac": frac, "shape": partway(b.arch, frac), "steps": [lo, hi], "kept": list(kept),
                              "pruned": pruned, "distilled": b.loss(model)})  # fmt: skip
                arch, lo = Architecture.from_config(model.config.to_dict()), hi
            if name == "one":  # first in every order (see `names`)
                one_shot = steps[0]["pruned"]
            gap = one_shot - row.doc["teacher_loss"]
            row(schedule=name, order=order, stages=steps, distilled=steps[-1]["distilled"], one_shot_pruned=one_shot,
                recovered=(one_shot - steps[-1]["distilled"]) / gap)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
