"""Weight-aware hidden-channel criteria on the all-axes cut of issue 18 (pruned loss only).

The hidden axis carries almost all of the all-axes gap (BENCHMARKS.md, ablation). This tries
Wanda-style criteria, activation × weight norm, against the default activation score (`hidden`, summed
over layers):

    act_x_in      hidden_j × sum over the matrices that read the residual stream (Mamba in_proj,
                  q/k/v, MLP up, lm_head) of the column norm ||W[:, j]||
    act_x_out     hidden_j × sum over the matrices that write it (out_proj, o_proj, down) of ||W[j, :]||
    act_x_in_out  hidden_j × (both sums)
    in_only       the reading norms alone

Everything else is the ablation's all-axes cut (its shape, 2 layers dropped by the default layer
scores, 32 calibration blocks of 128 tokens, 32 held-out blocks):

    python benchmarks/hidden_criteria.py minitron/assets/demo/teacher
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation as A  # noqa: E402

from minitron.prune.select import least_important  # noqa: E402

READS = ("in_proj", "q_proj", "k_proj", "v_proj", "up_proj", "lm_head")
WRITES = ("out_proj", "o_proj", "down_proj")


def main(teacher: Path) -> None:
    torch.set_num_threads(1)
    b = A.Bench(teacher, {"calib": 32, "eval": 32, "draws": 1, "seeds": 3})
    t = b.scores(0)
    h = b.arch.hidden_size
    sd = {k: v.float() for k, v in b.teacher.state_dict().items() if v.ndim == 2}
    col_in = torch.stack([w.norm(dim=0) for k, w in sd.items() if w.shape[1] == h and any(s in k for s in READS)])
    row_out = torch.stack([w.norm(dim=1) for k, w in sd.items() if w.shape[0] == h and any(s in k for s in WRITES)])
    col_in, row_out = col_in.sum(0).double(), row_out.sum(0).double()
    base = t["hidden"].double()
    variants = {"default": base, "act_x_in": base * col_in, "act_x_out": base * row_out,
                "act_x_in_out": base * (col_in + row_out), "in_only": col_in}
    dropped = least_important(t["layers"], b.arch, {"*": 1})[: A.DROP_ALL]
    print("teacher", round(b.loss(b.teacher), 4))
    for name, v in variants.items():
        print(name, round(b.measure({**t, "hidden": v.float()}, A.ALL_AXES, dropped)["pruned"], 4), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
