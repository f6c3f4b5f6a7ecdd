"""Overhead of `minitron eval`'s perplexity (and KL) over a bare loop of forward passes on the same blocks.

    python benchmarks/bench_eval.py --repeats 11                 # 115.7M-param random Nemotron-H, CPU, 1 thread
    python benchmarks/bench_eval.py --hidden 256 --vocab 16384 --blocks 8 --repeats 7
    python benchmarks/bench_eval.py --teacher --repeats 5       # perplexity + KL to a second model
    python benchmarks/bench_eval.py --device cuda --dtype bf16 --vocab 131072 --seq-len 2048 --blocks 16

The baseline is the loop any user would write: `model(input_ids=batch).logits` for every batch of
blocks, nothing else. The measured path is `minitron.evaluate.perplexity.score_blocks` (the function
`minitron eval --data` runs): the same forwards plus the fused next-token cross-entropy and the
bookkeeping. With `--teacher`, the baseline also runs the teacher's forward on each batch and the
measured path adds the chunked KL. Runs are interleaved (baseline, eval, baseline, ...) and the
median of `--repeats` is reported; goal: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def bare_loop(model, blocks, batch_size, teacher=None):
    with torch.inference_mode():
        for a in range(0, blocks.shape[0], batch_size):
            ids = blocks[a : a + batch_size].to(next(model.parameters()).device)
            logits = model(input_ids=ids, use_cache=False).logits
            if teacher is not None:
                t_logits = teacher(input_ids=ids, use_cache=False).logits
                del t_logits
            del logits
    if blocks.device.type == "cuda" or next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def eval_path(model, blocks, batch_size, teacher=None):
    from minitron.evaluate.perplexity import score_blocks

    out = score_blocks(model, blocks, batch_size=batch_size, teacher=teacher)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return out


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier figure."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--pattern", default="M-M*M-M*")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--teacher", action="store_true", help="Also measure the KL path (teacher = a second model)."
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine).")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from minitron.dtypes import torch_dtype
    from minitron.testing import build_model, tiny_config

    h = args.hidden
    cfg = tiny_config(
        hidden_size=h, vocab_size=args.vocab, intermediate_size=4 * h, num_attention_heads=h // 32,
        num_key_value_heads=max(1, h // 128), head_dim=32, mamba_num_heads=h // 16, mamba_head_dim=32,
        n_groups=2, ssm_state_size=64, chunk_size=64, hybrid_override_pattern=args.pattern,
        max_position_embeddings=max(4096, args.seq_len),
    )  # fmt: skip
    dt = torch_dtype(args.dtype)
    model = build_model(cfg, seed=0).to(args.device, dt)
    teacher = build_model(cfg, seed=1).to(args.device, dt) if args.teacher else None
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(3, args.vocab, (args.blocks, args.seq_len), generator=g)

    # warm-up both paths once
    bare_loop(model, blocks[: args.batch_size], args.batch_size, teacher)
    eval_path(model, blocks[: args.batch_size], args.batch_size, teacher)
    base, ours = [], []
    for _ in range(args.repeats):
        base.append(timed(bare_loop, model, blocks, args.batch_size, teacher))
        ours.append(timed(eval_path, model, blocks, args.batch_size, teacher))
    b, o = statistics.median(w for w, _ in base), statistics.median(w for w, _ in ours)
    bc, oc = statistics.median(c for _, c in base), statistics.median(c for _, c in ours)
    params = sum(p.numel() for p in model.parameters())
    tokens = args.blocks * args.seq_len
    result = {
        "what": "eval perplexity" + (" + KL" if args.teacher else "") + " vs bare forward loop",
        "params": params,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "blocks": args.blocks,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "vocab": args.vocab,
        "repeats": args.repeats,
        "bare_seconds_median": b,
        "eval_seconds_median": o,
        "bare_tokens_per_second": tokens / b,
        "eval_tokens_per_second": tokens / o,
        "ratio": o / b,
        "bare_cpu_seconds_median": bc,
        "eval_cpu_seconds_median": oc,
        "cpu_time_ratio": oc / bc,
        "bare_runs_wall": [w for w, _ in base],
        "eval_runs_wall": [w for w, _ in ours],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
