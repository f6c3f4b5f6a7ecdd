"""How many calibration blocks does `minitron score` need? Rankings at N blocks against a large-sample reference.

  python benchmarks/calibration.py --teacher minitron/assets/demo/teacher --out /tmp/calib-seed0.json

Scores the teacher (default signals, `kl` layer metric, blocks of SEQ_LEN tokens from the demo
corpus's train.txt) on REFERENCE blocks (seed 0) and on N blocks for each N in SIZES, drawn with
seeds 1..`--draws`. Per axis it reports, against the reference: Spearman's rank correlation (within
each layer's row, averaged over the rows; hidden and layers are one row) and the share of the
reference's top half that the N-block ranking also keeps (what a 50 % cut would keep in common).
Prints a markdown table; the JSON holds every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 128
REFERENCE = 128
SIZES = (4, 8, 16, 32, 64)
AXES = ("hidden", "ffn", "attention_heads", "mamba_heads", "mamba_head_dim", "layers")


def ranks(v):
    """[U] -> [U] float ranks 0..U-1 (ties broken by index: the order `prune`'s top-k uses)."""
    order = sorted(range(len(v)), key=lambda i: (-float(v[i]), i))
    r = torch.empty(len(v))
    for k, i in enumerate(order):
        r[i] = k
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def top_half_overlap(a, b) -> float:
    k = len(a) // 2
    ta = set(sorted(range(len(a)), key=lambda i: (-float(a[i]), i))[:k])
    tb = set(sorted(range(len(b)), key=lambda i: (-float(b[i]), i))[:k])
    return len(ta & tb) / k


def compare(ref, got) -> dict:
    out = {}
    for axis in AXES:
        r, g = ref[axis], got[axis]
        rows = [(r, g)] if r.dim() == 1 else list(zip(r, g, strict=True))
        out[axis] = {"spearman": statistics.fmean(spearman(x, y) for x, y in rows),
                     "top_half": statistics.fmean(top_half_overlap(x, y) for x, y in rows)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=REPO / "minitron" / "assets" / "demo" / "teacher")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from minitron.data import load_blocks
    from minitron.importance.aggregate import Aggregation
    from minitron.importance.engine import InMemorySource
    from minitron.models.checkpoint import load_model, load_tokenizer, open_checkpoint
    from minitron.recipes.score import score_tensors

    t0 = time.perf_counter()
    arch = open_checkpoint(args.teacher).arch
    tok = load_tokenizer(args.teacher)
    model = load_model(args.teacher, dtype="fp32", device="cpu").eval()
    train = REPO / "minitron" / "assets" / "demo" / "corpus" / "train.txt"

    def scores(n: int, seed: int) -> dict:
        blocks = load_blocks([train], tok, seq_len=SEQ_LEN, samples=n, seed=seed)
        t, _, _ = score_tensors(InMemorySource(model), arch, blocks, agg=Aggregation(), batch_size=8, layer_metric="kl")
        return t

    ref = scores(REFERENCE, 0)
    res = {"teacher": str(args.teacher), "reference": REFERENCE, "seq_len": SEQ_LEN, "load_start": os.getloadavg(),
           "command": "python benchmarks/calibration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": []}
    for n in SIZES:
        for d in range(1, args.draws + 1):
            c = compare(ref, scores(n, d))
            res["rows"].append({"samples": n, "seed": d, **c})
            print(f"[{time.perf_counter() - t0:6.0f} s] {n} blocks seed {d}: "
                  + ", ".join(f"{a} {v['spearman']:.3f}/{v['top_half']:.2f}" for a, v in c.items()), file=sys.stderr)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["load_end"] = os.getloadavg()
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    lines = ["| blocks | " + " | ".join(AXES) + " |", "|---|" + "---|" * len(AXES)]
    for n in SIZES:
        rows = [r for r in res["rows"] if r["samples"] == n]
        cells = [f"{min(r[a]['spearman'] for r in rows):.3f} / {min(r[a]['top_half'] for r in rows):.2f}" for a in AXES]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
