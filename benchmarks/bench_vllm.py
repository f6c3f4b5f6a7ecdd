"""Generation throughput of the demo teacher and its every-axis pruned model in vLLM (CPU build).

  MINITRON_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/bench_vllm.py [--repeats 3] [--work DIR]

The pruned model is the one of tests/test_vllm.py: the demo teacher scored on 8 x 64 tokens of its
corpus and pruned to hidden 192, FFN 384, 12 Mamba heads x 12, 4 query / 1 KV heads, 8 layers. Each
repeat is one `minitron eval teacher pruned --vllm` process (vLLM compiled, as served; fp32 on CPU):
a batch of 8 seeded 64-token prompts, 32 new tokens each, one warm-up and 5 timed generations per
model; a repeat's figure is the median of its 5. Printed: per repeat the vLLM tokens/s of both
models and the ratio pruned / teacher, on wall time and on the vLLM process's CPU time, and the
median over repeats; greedy agreement and the cache-bytes check of every run. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "minitron" / "assets" / "demo"


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "minitron", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    teacher, pruned = DEMO / "teacher", work / "pruned"
    if not pruned.is_dir():
        _cli("score", teacher, "--data", DEMO / "corpus" / "train.txt", "--samples", 8, "--seq-len", 64,
             "--out", work / "scores", "--overwrite")  # fmt: skip
        _cli("prune", teacher, "--scores", work / "scores", "--hidden-size", 192, "--ffn-size", 384,
             "--mamba-heads", 12, "--mamba-head-dim", 12, "--attention-heads", 4, "--kv-heads", 1,
             "--drop-layers", "4,5", "--out", pruned)  # fmt: skip
    rows = []
    for _ in range(a.repeats):
        load_before = os.getloadavg()[0]
        doc = json.loads(_cli("eval", teacher, pruned, "--vllm", "--prompt-len", 64, "--gen-len", 32,
                              "--throughput-batch-size", 8, "--throughput-runs", 5, "--json"))  # fmt: skip
        t, p = (m["vllm"] for m in doc["models"])
        cpu = [8 * 32 / statistics.median(v["throughput"]["cpu_seconds"]) for v in (t, p)]  # tokens per CPU second
        rows.append({
            "teacher_tokens_per_second": t["throughput"]["generate_tokens_per_second"],
            "pruned_tokens_per_second": p["throughput"]["generate_tokens_per_second"],
            "ratio_wall": p["throughput"]["generate_tokens_per_second"] / t["throughput"]["generate_tokens_per_second"],
            "ratio_cpu": cpu[1] / cpu[0],
            "hf_ratio_wall": p["throughput"]["hf_generate_tokens_per_second"] / t["throughput"]["hf_generate_tokens_per_second"],
            "greedy_equal": t["greedy"]["equal"] and p["greedy"]["equal"],
            "cache_equal": t["cache"]["equal"] and p["cache"]["equal"],
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "teacher_seconds": t["throughput"]["seconds"], "pruned_seconds": p["throughput"]["seconds"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    out = {"repeats": rows, "vllm": t["version"], "cpus": os.cpu_count(),
           "median_ratio_wall": statistics.median(r["ratio_wall"] for r in rows),
           "median_ratio_cpu": statistics.median(r["ratio_cpu"] for r in rows),
           "median_hf_ratio_wall": statistics.median(r["hf_ratio_wall"] for r in rows)}  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
