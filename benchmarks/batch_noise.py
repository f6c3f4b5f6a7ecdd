"""What holds the 40-step run below 80 % (issue 18): the tokens per step, and the start.

On one trained teacher, the student of `benchmarks/intermediate.py` (today's defaults, calibration
draw 0: the all-axes cut in the principal basis, gated Mamba signals, refitted output projections,
the 2 layers the layer scores drop), distilled with the demo's recipe (WSD, lr 2e-3, 4 warm-up steps,
AdamW beta1 0.7, intermediate-state weight 10) for 40 steps; held-out loss on the ablation's
32 x 128 tokens. Rows:

    batch   40 steps of G blocks of 128 tokens (G in `--batches`, micro-batches of 8 with gradient
            accumulation), every data order in `--orders`; and `--big` blocks per step on order 0.
            G = 8 is the goal's budget (40,960 tokens); larger G is the same number of steps with
            less gradient noise (G / 8 times the tokens): how far 40 steps reach without the noise.
    refit   G = 8 from a better start: every output projection refitted again in layer order by least
            squares on the *student's own* inputs (`sequential_refit`), so that each kept layer writes
            what the teacher's layer adds to the stream, in the student's basis; every order.

    python benchmarks/batch_noise.py --teacher minitron/assets/demo/teacher --out docs/benchmarks/batch_noise/seed0.json

Single thread by default (`--threads`). One JSON document of rows, written as it goes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402
from hidden_basis import RECIPE_40, STEPS  # noqa: E402

PROJECTIONS = ("out_proj", "o_proj", "down_proj")  # the writer of each nemotron_h block's mixer


def _projection(block):
    return next(getattr(block.mixer, n) for n in PROJECTIONS if hasattr(block.mixer, n))


def _capture(model, blocks: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input of the block's output projection [N, n], block input [N, h], block output [N, h]), fp64."""
    block = model.model.layers[layer]
    got: dict[str, list] = {"a": [], "i": [], "o": []}

    def keep(key, x):
        x = x[0] if isinstance(x, tuple) else x
        got[key].append(x.detach().reshape(-1, x.shape[-1]).double())

    hooks = [_projection(block).register_forward_pre_hook(lambda m, a: keep("a", a[0])),
             block.register_forward_pre_hook(lambda m, a, k: keep("i", a[0] if a else k["hidden_states"]),
                                             with_kwargs=True),
             block.register_forward_hook(lambda m, a, o: keep("o", o))]  # fmt: skip
    try:
        with torch.no_grad():
            for i in range(0, len(blocks), 8):
                model(blocks[i : i + 8])
    finally:
        for h in hooks:
            h.remove()
    return tuple(torch.cat(got[k]) for k in "aio")


def sequential_refit(student, teacher, blocks: torch.Tensor, kept: list[int], q: torch.Tensor,
                     ridge: float = 1e-2) -> None:  # fmt: skip
    """Refit each student layer's output projection W, in layer order, on the student's own inputs:

        W = argmin ||a_s W^T - (t_out q - s_in)||^2 + lambda ||W||^2,   lambda = ridge * mean diag(a_s^T a_s / N)

    a_s: the projection's input in the student (after the layers before it were refitted), s_in: the
    student block's input stream, t_out: the output stream of the teacher layer it stands for
    (`kept[j]`; a dropped teacher layer before it is folded in), q [n, k]: the kept columns of the
    hidden basis. `prune --compensation` refits on the teacher's inputs instead, one layer at a time."""
    student.eval()
    for j, tj in enumerate(kept):
        _, _, t_out = _capture(teacher, blocks, tj)
        a_s, s_in, _ = _capture(student, blocks, j)
        target = t_out @ q - s_in
        c = a_s.T @ a_s / len(a_s)
        lam = ridge * float(c.diagonal().mean())
        w = torch.linalg.solve(c + lam * torch.eye(c.shape[0], dtype=c.dtype), a_s.T @ target / len(a_s)).T
        proj = _projection(student.model.layers[j])
        with torch.no_grad():
            proj.weight.copy_(w.to(proj.weight.dtype))


def main(argv=None) -> int:
    ap = A.arg_parser(__doc__)
    ap.add_argument("--orders", default="0,1,2", help="data orders (TrainConfig.seed)")
    ap.add_argument("--batches", default="8,16,32", help="blocks per step, every order (multiples of 8)")
    ap.add_argument("--big", default="64", help="blocks per step, order 0 only ('' for none)")
    ap.add_argument("--no-refit", action="store_true", help="leave out the refit rows")
    args = ap.parse_args(argv)
    orders, batches, big = A.int_list("--orders", args.orders), A.int_list("--batches", args.batches), A.int_list("--big", args.big)
    if any(g % 8 or not g for g in batches + big):
        raise SystemExit(f"--batches/--big: blocks per step must be positive multiples of 8, got {batches + big}")
    torch.set_num_threads(args.threads)
    b = A.Bench(args.teacher, {"calib": 32, "eval": 32, "draws": 1, "seeds": 0})
    row = A.Rows(args.out, "batch_noise.py", argv, args.teacher, b.loss(b.teacher))
    row.doc["recipe"] = RECIPE_40
    d = b.defaults(0)
    q = d.rotation.basis[:, : A.ALL_AXES["hidden_size"]].double()
    start = b.measure(d.ranking, A.ALL_AXES, d.dropped, rotation=d.rotation, compensation=d.compensation)["pruned"]
    gap = start - row.doc["teacher_loss"]  # the default start's gap: every row's share is of it
    row.doc["pruned"] = start

    def measure(kind: str, order: int, g: int, refit: bool = False) -> None:
        recipe = {**RECIPE_40, "layer_map": d.kept, "global_batch_size": g}
        # refit: the same plan, then the sequential refit on the calibration blocks
        edit = (lambda model: sequential_refit(model, b.teacher, b.calib[0], d.kept, q)) if refit else None
        r = b.measure(d.ranking, A.ALL_AXES, d.dropped, steps=STEPS, recipe=recipe, rotation=d.rotation,
                      compensation=d.compensation, seed=order, edit=edit)  # fmt: skip
        row(kind=kind, order=order, blocks_per_step=g, steps=STEPS, tokens=STEPS * g * A.SEQ_LEN,
            recovered=(start - r["distilled"]) / gap, **r)  # fmt: skip

    for order in orders:
        for g in batches:
            measure("batch", order, g)
    for g in big:
        measure("batch", 0, g)
    if not args.no_refit:
        for order in orders:
            measure("refit", order, 8, refit=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
