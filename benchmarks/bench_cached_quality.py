"""Cached vs online teacher logits at k = 64 on the bundled demo teacher and its pruned student.

  python benchmarks/bench_cached_quality.py [--steps 40] [--seeds 0 1 2] [--work DIR]

The demo pipeline of docs/distill.md: score the bundled teacher, prune it to hidden 192, FFN 384,
8 layers, then distil `--steps` steps of 8 x 256 tokens (lr 1e-3, warmup 4) on the first
`--train-chars` characters of the demo corpus (so that the cache holds every block the runs see):

  online   resident teacher, --top-k 64 (top-64 + tail bin, the cache's definition), seeds 0, 1, 2
  cached   `minitron teacher-logits --top-k 64` once, then --teacher-logits, seeds 0, 1, 2
  full     resident teacher, full-vocabulary forward KL (the default), seed 0 (reference)

Every result is evaluated afterwards in the same way: full-vocabulary KL(teacher || student) and LM
loss on the first 16 held-out blocks (`minitron.distill.trainer.evaluate`). The run-to-run noise is
the spread over data-order seeds. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "minitron", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-chars", type=int, default=400_000)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from minitron.assets import ASSETS
    from minitron.data import load_blocks
    from minitron.distill.trainer import evaluate
    from minitron.models.checkpoint import load_model, load_tokenizer

    demo = ASSETS / "demo"
    teacher = demo / "teacher"
    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-cached-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    train = work / "train.txt"
    train.write_text((demo / "corpus" / "train.txt").read_text()[: args.train_chars])
    heldout = demo / "corpus" / "heldout.txt"
    _cli("score", teacher, "--data", train, "--samples", 64, "--seq-len", 256, "--out", work / "scores")
    _cli("prune", teacher, "--scores", work / "scores", "--hidden-size", 192, "--ffn-size", 384, "--num-layers", 8,
         "--out", work / "pruned")  # fmt: skip
    t0 = time.perf_counter()
    cache_doc = json.loads(_cli("teacher-logits", teacher, "--data", train, "--seq-len", 256, "--top-k", 64,
                                "--eval-data", heldout, "--eval-samples", 16, "--out", work / "cache", "--json"))  # fmt: skip
    cache_wall = time.perf_counter() - t0
    common = ["--teacher", teacher, "--student", work / "pruned", "--data", train, "--seq-len", 256,
              "--micro-batch-size", 4, "--global-batch-size", 8, "--steps", args.steps, "--lr", "1e-3",
              "--warmup-steps", 4, "--eval-data", heldout, "--eval-samples", 16, "--save-every", 0, "--json"]  # fmt: skip
    runs = {}
    for seed in args.seeds:
        for kind, extra in (("online", ["--top-k", 64]), ("cached", ["--teacher-logits", work / "cache"])):
            out = work / f"{kind}-{seed}"
            doc = json.loads(_cli("distill", *common, "--seed", seed, "--out", out, *extra))
            runs[f"{kind}-{seed}"] = {"out": out, "in_run_final_eval": doc["final_eval"],
                                      "tokens_per_second": doc["tokens_per_second"], "wall_s": doc["wall_time_s"]}  # fmt: skip
    out = work / "full-0"
    doc = json.loads(_cli("distill", *common, "--seed", args.seeds[0], "--out", out))
    runs["full-0"] = {"out": out, "in_run_final_eval": doc["final_eval"], "tokens_per_second": doc["tokens_per_second"],
                      "wall_s": doc["wall_time_s"]}  # fmt: skip
    # the same full-vocabulary evaluation for every result
    tok = load_tokenizer(teacher)
    blocks = load_blocks([heldout], tok, seq_len=256)[:16]
    t_model = load_model(teacher)
    for r in runs.values():
        ev = evaluate(t_model, load_model(r["out"]), blocks, micro_batch_size=4)
        r["val_kl_full"], r["val_loss"] = ev["kl"], ev["loss"]
        r["out"] = str(r["out"])
    pruned = evaluate(t_model, load_model(work / "pruned"), blocks, micro_batch_size=4)

    def spread(kind):
        v = [runs[f"{kind}-{s}"]["val_kl_full"] for s in args.seeds]
        return {"mean": statistics.mean(v), "stdev": statistics.stdev(v) if len(v) > 1 else None,
                "min": min(v), "max": max(v), "values": v}  # fmt: skip

    print(json.dumps({
        "steps": args.steps, "tokens_per_run": args.steps * 8 * 256, "seeds": args.seeds,
        "pruned_before_distill": pruned, "cache": cache_doc | {"wall_s": cache_wall},
        "online_topk64": spread("online"), "cached_topk64": spread("cached"),
        "same_seed_differences": {s: runs[f"cached-{s}"]["val_kl_full"] - runs[f"online-{s}"]["val_kl_full"]
                                  for s in args.seeds},
        "runs": runs, "work": str(work),
    }, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
