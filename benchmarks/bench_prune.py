"""Benchmark: stream-prune the synthetic 12B checkpoint to the Nemotron Nano 2 9B shape
(or, with `--moe`, a synthetic checkpoint with Nemotron 3 Nano's per-layer shapes to half its experts).

Measures, each in a fresh subprocess (so peak RSS is that run's own), alternating so that the page
cache favours neither:

    copy   a plain copy of the source shards (shutil.copyfile, the same bytes as the input)
    prune  `minitron.recipes.prune.prune()` with hidden 4480, FFN 15680, Mamba heads 128, dropping
           layers 7,8,17,18,48,52 (the full command path: checks, streaming apply, config,
           tokenizer files, minitron.json)

and reports the median wall time of each, their ratio (goal <= 1.5) and the prune's peak RSS
against the largest source shard (goal <= 2x). Scores are random (the speed does not depend on
which units are kept) and are written once beside the checkpoint.

    python benchmarks/make_synthetic_checkpoint.py nemotron-nano-12b-v2-base .bench/synthetic-12b
    python benchmarks/bench_prune.py --src .bench/synthetic-12b --runs 3

    python benchmarks/make_synthetic_checkpoint.py nemotron-3-nano-30b-a3b .bench/synthetic-nano3 \
        --set hybrid_override_pattern='"MEM*E"' --set num_hidden_layers=5
    python benchmarks/bench_prune.py --moe --src .bench/synthetic-nano3 --runs 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAN = dict(hidden_size=4480, ffn_size=15680, mamba_heads=128, drop_layers="7,8,17,18,48,52")
# Nemotron 3 Nano: half the routed experts, every expert and the shared expert narrower (streamed per expert).
MOE_PLAN = dict(experts=64, moe_ffn_size=1536, shared_expert_ffn_size=3072)


def _child_copy(src: Path, dst: Path) -> dict:
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    n = 0
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
            n += f.stat().st_size
    return {"seconds": time.perf_counter() - t0, "bytes": n}


def _child_prune(src: Path, dst: Path, scores: Path, moe: bool = False) -> dict:
    from minitron.prune.select import Shape
    from minitron.recipes.prune import PruneOptions, prune

    t0 = time.perf_counter()
    if moe:
        opts = PruneOptions(model=src, out=dst, scores=scores, shape=Shape(**MOE_PLAN))
    else:
        opts = PruneOptions(model=src, out=dst, scores=scores, drop_layers=PLAN["drop_layers"],
                            shape=Shape(hidden_size=PLAN["hidden_size"], ffn_size=PLAN["ffn_size"],
                                        mamba_heads=PLAN["mamba_heads"]))
    doc = prune(opts)
    seconds = time.perf_counter() - t0
    # The result's headers agree with its config (names, shapes), and (12B) its config is the 9B's shape.
    from minitron.models.checkpoint import open_checkpoint

    out = open_checkpoint(dst)
    assert out.arch.total_params == doc["params_after"], doc["params_after"]
    assert moe or doc["params_after"] == 8_888_227_328, doc["params_after"]
    return {"seconds": seconds, "bytes": doc["files"]["bytes"], "params_after": doc["params_after"]}


def _write_scores(src: Path, dst: Path) -> None:
    import torch

    from minitron.importance.scores import Scores, expected_shapes
    from minitron.io import model_fingerprint
    from minitron.models.architecture import Architecture

    arch = Architecture.from_path(src)
    g = torch.Generator().manual_seed(0)
    dst.mkdir(parents=True, exist_ok=True)
    Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()},
           fingerprint=model_fingerprint(src)).save(dst)


def _run_child(kind: str, src: Path, dst: Path, scores: Path, moe: bool = False) -> dict:
    code = (
        "import json, resource, sys; sys.path.insert(0, 'benchmarks'); import bench_prune as b; from pathlib import Path; "
        f"r = b._child_{kind}(Path({str(src)!r}), Path({str(dst)!r})"
        + (f", Path({str(scores)!r}), moe={moe!r})" if kind == "prune" else ")")
        + "; r['peak_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; print(json.dumps(r))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=Path(".bench/synthetic-12b"))
    ap.add_argument("--work", type=Path, default=Path(".bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--moe", action="store_true", help=f"prune a Nemotron 3 Nano-shaped checkpoint to {MOE_PLAN}")
    args = ap.parse_args()

    from minitron.models.checkpoint import open_checkpoint

    ckpt = open_checkpoint(args.src)
    scores = args.work / f"scores-{args.src.name}"
    if not (scores / "scores.safetensors").is_file():
        _write_scores(args.src, scores)
    results = {"copy": [], "prune": []}
    for r in range(args.runs):
        for kind in ("copy", "prune"):
            dst = args.work / f"bench-{kind}"
            shutil.rmtree(dst, ignore_errors=True)
            res = _run_child(kind, args.src, dst, scores, moe=args.moe)
            shutil.rmtree(dst, ignore_errors=True)
            results[kind].append(res)
            print(f"run {r + 1} {kind}: {res['seconds']:.1f} s, peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB",
                  file=sys.stderr)
    copy_s = statistics.median(x["seconds"] for x in results["copy"])
    prune_s = statistics.median(x["seconds"] for x in results["prune"])
    rss = max(x["peak_rss_bytes"] for x in results["prune"])
    summary = {
        "source_bytes": ckpt.weights_bytes,
        "largest_shard_bytes": ckpt.largest_shard_bytes,
        "output_bytes": results["prune"][0]["bytes"],
        "params_after": results["prune"][0]["params_after"],
        "copy_seconds_median": round(copy_s, 2),
        "prune_seconds_median": round(prune_s, 2),
        "time_ratio": round(prune_s / copy_s, 3),
        "prune_peak_rss_bytes": rss,
        "rss_over_largest_shard": round(rss / ckpt.largest_shard_bytes, 3),
        "runs": results,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
