"""Benchmarks of `minitron score`: width-scoring overhead, layer-scoring cost, streamed peak RSS.

    python benchmarks/bench_score.py width     # width scoring / plain forward over the same tokens (goal <= 1.10)
    python benchmarks/bench_score.py width --moe   # the same on a MoE hybrid (experts scored too; goal <= 1.15;
                                                   # also the recomputing-hook path, ratio_recompute)
    python benchmarks/bench_score.py layers    # layer scoring (kl) / N+1 full passes            (goal <= 0.6)
    python benchmarks/bench_score.py streaming [--model .bench/synthetic-12b]   # peak RSS     (goal < 8 GiB)
    python benchmarks/bench_score.py all

Timings are medians of --repeats runs, each ratio against its baseline measured in the same process
and interleaved with it; by default on one torch thread, by process CPU time, which stays meaningful
on a machine shared with other jobs (wall time there varies by 5x between identical runs). The width run uses a random 10-layer hybrid (hidden 512, vocab 8192). The
layer run uses the 12B's own 62-layer pattern at hidden 256 (vocab 8192: the lm_head costs ~4 blocks,
as in the 12B): skip-one-block scoring costs (N+1)/2N of the naive block evaluations (0.55 at N=10,
0.51 at N=62) plus the N+1 head evaluations both sides pay, so depth matters for the ratio. The streaming run scores the 12B-shaped random
checkpoint written by `make_synthetic_checkpoint.py` (created first when missing) in a child process
and reads its peak RSS from the kernel (ru_maxrss of the child).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_12B = ROOT / ".bench" / "synthetic-12b"


PATTERN_10 = "M-M*M-M*M-"
PATTERN_20 = "M-M-M*M-M-M-M*M-M-M-"
PATTERN_12B = "M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-"  # Nemotron Nano 12B v2's 62 layers


PATTERN_MOE = "MEM*EMEM*E"  # Nemotron 3 Nano's mix: Mamba and MoE blocks, a few attention
# Nemotron 3 Nano's proportions at hidden 512: 32 routed experts of 0.7 x hidden, top-6, a shared expert of 1.4 x.
MOE = dict(n_routed_experts=32, moe_intermediate_size=352, moe_shared_expert_intermediate_size=704,
           num_experts_per_tok=6, routed_scaling_factor=2.5)


def medium_model(pattern: str = PATTERN_10, **overrides):
    from minitron.testing import build_model, tiny_config

    cfg = tiny_config(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=2,
                      head_dim=64, mamba_num_heads=16, mamba_head_dim=64, n_groups=2, ssm_state_size=64,
                      chunk_size=64, vocab_size=8192, hybrid_override_pattern=pattern, **overrides)
    return build_model(cfg)


def deep_model():
    """The 12B's 62-layer pattern at small width; the lm_head costs ~4 blocks, as in the 12B (~3.8)."""
    from minitron.testing import build_model, tiny_config

    cfg = tiny_config(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, mamba_num_heads=8, mamba_head_dim=64, n_groups=2, ssm_state_size=64,
                      chunk_size=64, vocab_size=8192, hybrid_override_pattern=PATTERN_12B)
    return build_model(cfg)


CLOCK = time.process_time  # --clock cpu (default) or wall


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = CLOCK()
        fn()
        times.append(CLOCK() - t)
    return statistics.median(times), times


def bench_width(args) -> dict:
    import torch

    from minitron.importance.aggregate import Aggregation
    from minitron.importance.engine import InMemorySource
    from minitron.models.architecture import Architecture
    from minitron.recipes.score import score_tensors

    model = medium_model(args.pattern or PATTERN_MOE, **MOE) if args.moe else medium_model(args.pattern or PATTERN_10)
    arch = Architecture.from_config(model.config.to_dict())
    tokens = torch.randint(3, 8192, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))

    def plain():
        with torch.inference_mode():
            for s in range(0, len(tokens), args.batch_size):
                model(tokens[s : s + args.batch_size])

    def backbone():  # the stricter baseline: without the lm_head, which width scoring does not run
        with torch.inference_mode():
            for s in range(0, len(tokens), args.batch_size):
                model.model(tokens[s : s + args.batch_size])

    def width():
        score_tensors(InMemorySource(model), arch, tokens, agg=Aggregation(), batch_size=args.batch_size,
                      layer_metric="cosine")

    def width_recompute():  # MoE: the earlier path, a hook that recomputes every routed expert
        from minitron.importance import expert_capture

        register = expert_capture._register
        expert_capture._register = lambda: False  # no scoring implementation: the hooks fall back
        try:
            width()
        finally:
            expert_capture._register = register

    plain(), backbone(), width()  # warm up
    p_times, b_times, w_times, r_times = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
        p_times.append(median_time(plain, 1)[0])
        b_times.append(median_time(backbone, 1)[0])
        w_times.append(median_time(width, 1)[0])
        if args.moe:
            r_times.append(median_time(width_recompute, 1)[0])
    p, b, w = statistics.median(p_times), statistics.median(b_times), statistics.median(w_times)
    doc = {"bench": "width", "pattern": model.config.hybrid_override_pattern, "tokens": tokens.numel(), "plain_forward_s": round(p, 4),
           "backbone_forward_s": round(b, 4), "width_scoring_s": round(w, 4), "ratio": round(w / p, 3),
           "ratio_vs_backbone": round(w / b, 3), "goal": "<= 1.15" if args.moe else "<= 1.10",
           "runs_plain": [round(t, 4) for t in p_times], "runs_backbone": [round(t, 4) for t in b_times],
           "runs_width": [round(t, 4) for t in w_times]}
    if args.moe:
        r = statistics.median(r_times)
        doc.update(recompute_scoring_s=round(r, 4), ratio_recompute=round(r / p, 3),
                   runs_recompute=[round(t, 4) for t in r_times])
    return doc


def bench_layers(args) -> dict:
    import torch

    from minitron.importance.depth import kl_per_token, layer_scores
    from minitron.testing import blocks_skipped

    model = medium_model(args.pattern) if args.pattern else deep_model()
    tokens = torch.randint(3, 8192, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    n = len(model.model.layers)

    def naive():  # N+1 full passes of transformers' forward, one block replaced by identity each time
        with torch.inference_mode():
            for s in range(0, len(tokens), args.batch_size):
                tb = tokens[s : s + args.batch_size]
                ref = model(tb).logits
                for i in range(n):
                    with blocks_skipped(model, [i]):
                        kl_per_token(ref, model(tb).logits).sum()

    def ours():
        layer_scores(model, tokens, metric="kl", batch_size=args.batch_size)

    naive(), ours()
    n_times, o_times = [], []
    for _ in range(args.repeats):
        n_times.append(median_time(naive, 1)[0])
        o_times.append(median_time(ours, 1)[0])
    nv, ov = statistics.median(n_times), statistics.median(o_times)
    return {"bench": "layers", "layers": n, "pattern": model.config.hybrid_override_pattern, "tokens": tokens.numel(), "n_plus_1_passes_s": round(nv, 4),
            "layer_scoring_s": round(ov, 4), "ratio": round(ov / nv, 3), "goal": "<= 0.6",
            "runs_naive": [round(t, 4) for t in n_times], "runs_ours": [round(t, 4) for t in o_times]}


def bench_streaming(args) -> dict:
    model = Path(args.model)
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_synthetic_checkpoint.py"),
                        "nemotron-nano-12b-v2-base", str(model)], check=True)
    code = (
        "import json, sys, time, torch\n"
        "from minitron.importance.aggregate import Aggregation\n"
        "from minitron.recipes.score import score_tensors\n"
        "from minitron.models.block_stream import StreamingSource\n"
        f"src = StreamingSource({str(model)!r}, dtype=torch.{args.dtype})\n"
        "arch = src.ckpt.arch\n"
        f"tok = torch.randint(3, arch.vocab_size, ({args.stream_samples}, {args.stream_seq_len}), "
        "generator=torch.Generator().manual_seed(0))\n"
        "t = time.perf_counter()\n"
        f"out, n, _ = score_tensors(src, arch, tok, agg=Aggregation(), batch_size={args.batch_size}, "
        f"layer_metric={args.stream_metric!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'bytes_read': src.bytes_read, "
        "'finite': all(bool(torch.isfinite(v).all()) for v in out.values()), "
        "'params': arch.total_params}))\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    return {"bench": "streaming", "model": str(model), "params": doc["params"], "dtype": args.dtype,
            "samples": args.stream_samples, "seq_len": args.stream_seq_len, "metric": args.stream_metric,
            "seconds": round(doc["seconds"], 1), "bytes_read": doc["bytes_read"], "scores_finite": doc["finite"],
            "peak_rss_gib": round(peak_kib / 2**20, 3), "goal": "< 8 GiB",
            "note": "" if peak_kib > before else "child peak not above earlier children; rerun alone"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["width", "layers", "streaming", "all"])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pattern", default=None,
                    help="Layer pattern of a hidden-512 random model (default: width 10 layers; layers: the 12B's 62 layers at hidden 256).")
    ap.add_argument("--moe", action="store_true", help="width: a MoE hybrid (Nemotron 3 Nano's proportions).")
    ap.add_argument("--model", default=str(BENCH_12B))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--stream-samples", type=int, default=2)
    ap.add_argument("--stream-seq-len", type=int, default=64)
    ap.add_argument("--stream-metric", default="cosine")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time measures the work).")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU time, robust on a machine shared with other jobs; wall: elapsed time.")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    import torch

    torch.set_num_threads(args.threads)
    which = ["width", "layers", "streaming"] if args.which == "all" else [args.which]
    for w in which:
        doc = {"width": bench_width, "layers": bench_layers, "streaming": bench_streaming}[w](args)
        if w != "streaming":
            doc.update(clock=args.clock, threads=args.threads)
        print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
