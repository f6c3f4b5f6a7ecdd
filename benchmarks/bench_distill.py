"""Distillation benchmarks: loss memory (chunked vs plain) and step-time overhead of the trainer.

  python benchmarks/bench_distill.py memory [--vocab 131072] [--tokens 1024] [--repeats 3]
  python benchmarks/bench_distill.py step [--vocab 4096] [--hidden 384] [--seq-len 256] [--batch 4] [--repeats 5]
  python benchmarks/bench_distill.py cached [--top-k 64] [same options as step]

memory: each variant runs in its own subprocess (peak RSS is per process). The inputs — student
logits [tokens, vocab] fp32 requiring grad and teacher logits, as transformers' NemotronH returns
them — are allocated first (baseline RSS); then one forward + backward of the loss; "extra" is
peak RSS (ru_maxrss) minus that baseline: the memory the loss itself needs, gradient included;
"peak" is the whole process. `--shape train` makes the student logits with an lm_head
(hidden 256), frees both logit tensors after the loss and lets the chunked loss write its
gradient over the teacher logits (`reuse_teacher=True`), as the trainer does.

step: teacher forward (no_grad), student forward + backward (a dense gradient into the logits,
as the KD loss gives) and a full trainer step (teacher forward, student forward, chunked forward
KL, backward, clip, AdamW) are timed interleaved in one process; medians of `--repeats` after one
warm-up. The trainer's own work (loss forward + backward on logits of the same shape, clipping,
AdamW) is also timed apart: `trainer_work_share` = its median ÷ (teacher + student). Ratio = step / (teacher +
student); goal <= 1.10. Also the ratio of the per-kind minima (the least disturbed runs, for
shared machines). tokens/s = tokens per step / median step time.

cached: the same models and blocks. (1) Cache write (`logit_cache.write_split`: teacher forward +
top-k + tail + safetensors shards) ÷ a plain teacher forward over the same blocks and micro-batches
(goal <= 1.2). (2) A full trainer step with the resident teacher (full-vocabulary forward KL, and
online --top-k) and with the cached top-k logits (no teacher model), interleaved; ratio cached ÷
resident (goal <= 0.75). Medians of `--repeats` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, psutil, torch
from minitron.losses.divergence import distill_loss, plain_divergence
variant, n, v, kind, chunk, shape = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
if shape == "logits":  # the loss alone: both logit tensors are the caller's
    s = torch.randn(n, v).requires_grad_(True)
    t = torch.randn(n, v)
else:  # as in training: student logits = lm_head(hidden); the step frees both logits after the loss
    h = torch.randn(n, 256).requires_grad_(True)
    w = (0.05 * torch.randn(v, 256)).requires_grad_(True)
    t = torch.randn(n, v)
base = psutil.Process().memory_info().rss
t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import time
start = time.perf_counter()
if shape != "logits":
    s = h @ w.T
if variant == "plain":
    loss = plain_divergence(s, t, kind=kind)
else:
    loss = distill_loss(s, t, kind=kind, chunk_size=chunk or None, reuse_teacher=shape != "logits")
if shape != "logits":
    del s, t
loss.backward()
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak, "extra": peak - max(base, t0), "loss": float(loss), "time": elapsed}))
"""


def bench_memory(args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = {}
    for kind in args.kinds:
        for variant in ("plain", "chunked"):
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, "-c", CHILD, variant, str(args.tokens), str(args.vocab), kind,
                                      str(args.chunk_size), args.shape], capture_output=True, text=True, env=env,
                                     check=True)  # fmt: skip
                runs.append(json.loads(out.stdout))
            results[(kind, variant)] = {
                "extra_bytes": statistics.median(r["extra"] for r in runs),
                "peak_bytes": statistics.median(r["peak"] for r in runs),
                "loss": runs[0]["loss"], "time_s": statistics.median(r["time"] for r in runs),
            }
    rows = []
    inputs = 2 * args.tokens * args.vocab * 4
    for kind in args.kinds:
        p, c = results[(kind, "plain")], results[(kind, "chunked")]
        rows.append({
            "loss": kind, "plain_extra_mib": p["extra_bytes"] / 2**20, "chunked_extra_mib": c["extra_bytes"] / 2**20,
            "ratio_extra": c["extra_bytes"] / p["extra_bytes"], "plain_peak_mib": p["peak_bytes"] / 2**20,
            "chunked_peak_mib": c["peak_bytes"] / 2**20, "ratio_peak": c["peak_bytes"] / p["peak_bytes"],
            "plain_time_s": p["time_s"], "chunked_time_s": c["time_s"],
            "same_value": abs(p["loss"] - c["loss"]) <= 1e-4 * max(1.0, abs(p["loss"])),
        })  # fmt: skip
    return {"shape": args.shape, "tokens": args.tokens, "vocab": args.vocab, "chunk_size": args.chunk_size,
            "inputs_mib": inputs / 2**20, "one_logits_tensor_mib": inputs / 2 / 2**20, "rows": rows}  # fmt: skip


def _models(args):
    import torch

    from minitron.testing import build_model, tiny_config

    torch.set_num_threads(args.threads)
    common = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=args.hidden // 8,
                  mamba_num_heads=args.hidden // 16, mamba_head_dim=32, n_groups=2, ssm_state_size=32,
                  chunk_size=64, max_position_embeddings=max(512, args.seq_len))  # fmt: skip
    teacher = build_model(tiny_config(hybrid_override_pattern=args.teacher_pattern, **common), seed=0)
    student = build_model(tiny_config(hybrid_override_pattern=args.student_pattern, **common), seed=1)
    blocks = torch.randint(3, args.vocab, (64, args.seq_len), generator=torch.Generator().manual_seed(0))
    return teacher, student, blocks


def _config(args, teacher, student) -> dict:
    return {"vocab": args.vocab, "hidden": args.hidden, "teacher": args.teacher_pattern,
            "student": args.student_pattern, "seq_len": args.seq_len, "batch": args.batch, "threads": args.threads,
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_params": sum(p.numel() for p in student.parameters())}  # fmt: skip


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_cached(args) -> dict:
    import copy
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    from minitron.distill.logit_cache import TeacherLogits, write_split
    from minitron.distill.trainer import TrainConfig, Trainer

    teacher, student, blocks = _models(args)
    work = Path(tempfile.mkdtemp(prefix="minitron-bench-cache-"))
    write_blocks = blocks[: 4 * args.batch]

    def plain_forward():
        with torch.no_grad():
            for a in range(0, write_blocks.shape[0], args.batch):
                teacher(input_ids=write_blocks[a : a + args.batch], use_cache=False).logits  # noqa: B018

    def write(dest):
        dest.mkdir()
        write_split(teacher, write_blocks, dest, "train", k=args.top_k, micro_batch_size=args.batch)

    plain_forward()
    write(work / "warm")
    times = {"teacher_forward_blocks": [], "cache_write_blocks": []}
    for r in range(args.repeats):
        times["teacher_forward_blocks"].append(_timed(plain_forward))
        times["cache_write_blocks"].append(_timed(lambda r=r: write(work / f"w{r}")))
    # the cache the cached trainer reads: every block
    full = work / "cache"
    full.mkdir()
    entry = write_split(teacher, blocks, full, "train", k=args.top_k, micro_batch_size=args.batch)
    meta = {"format": "minitron-teacher-logits/1", "k": entry["k"], "tail": entry["tail"], "vocab_size": args.vocab,
            "seq_len": args.seq_len, "temperature": 1.0, "bytes_per_token": 4 * entry["k"] + 4 * (entry["k"] + 1),
            "splits": {"train": entry | {"data": []}}}  # fmt: skip
    (full / "index.json").write_text(json.dumps(meta))
    from minitron.distill.teacher import CachedTeacher

    cfg = dict(steps=10_000, micro_batch_size=args.batch, lr=1e-5, chunk_size=args.chunk_size)
    resident = Trainer(teacher, copy.deepcopy(student), blocks, None, TrainConfig(**cfg))
    resident_topk = Trainer(teacher, copy.deepcopy(student), blocks, None, TrainConfig(**cfg, top_k=args.top_k))
    cached = Trainer(CachedTeacher(TeacherLogits(full)), copy.deepcopy(student), blocks, None, TrainConfig(**cfg))
    steps = {"resident": resident, "resident_topk": resident_topk, "cached": cached}
    for t in steps.values():  # warm-up
        t.train_step()
    for name in steps:
        times[f"step_{name}"] = []
    for _ in range(args.repeats):
        for name, t in steps.items():
            times[f"step_{name}"].append(_timed(t.train_step))
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {
        "config": _config(args, teacher, student) | {"top_k": args.top_k, "write_blocks": int(write_blocks.shape[0])},
        "median_s": med, "min_s": best, "runs_s": times,
        "cache_write_ratio": med["cache_write_blocks"] / med["teacher_forward_blocks"],
        "cached_step_ratio": med["step_cached"] / med["step_resident"],
        "cached_step_ratio_vs_online_topk": med["step_cached"] / med["step_resident_topk"],
        "cached_step_ratio_of_minima": best["step_cached"] / best["step_resident"],
        "bytes_per_token": meta["bytes_per_token"],
    }  # fmt: skip


def bench_step(args) -> dict:
    import torch

    from minitron.distill.trainer import TrainConfig, Trainer
    from minitron.losses.divergence import distill_loss

    teacher, student, blocks = _models(args)
    cfg = TrainConfig(steps=10_000, micro_batch_size=args.batch, lr=1e-5, chunk_size=args.chunk_size)
    trainer = Trainer(teacher, student, blocks, None, cfg)
    ids = blocks[: args.batch]

    def teacher_fwd():
        with torch.no_grad():
            return teacher(input_ids=ids, use_cache=False).logits

    dense = torch.randn(args.batch, args.seq_len, args.vocab, generator=torch.Generator().manual_seed(1)) * 1e-4

    def student_fwd_bwd():  # a dense gradient into the logits, like the KD loss's
        student(input_ids=ids, use_cache=False).logits.backward(dense)
        student.zero_grad(set_to_none=True)

    def trainer_work():  # what the step adds to the two models: the loss, clipping, AdamW (timed apart)
        s_logits = torch.randn(args.batch, args.seq_len, args.vocab).requires_grad_(True)
        t_logits = torch.randn(args.batch, args.seq_len, args.vocab)
        student(input_ids=ids, use_cache=False).logits.backward(dense)  # gradients for clip / AdamW
        t0 = time.perf_counter()
        distill_loss(s_logits, t_logits, reduction="sum", reuse_teacher=True).backward()
        trainer._clip()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def step():
        trainer.train_step()

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for fn in (teacher_fwd, student_fwd_bwd, step):  # warm-up
        fn()
    times = {"teacher_forward": [], "student_forward_backward": [], "step": [], "loss_clip_adamw": []}
    for _ in range(args.repeats):
        times["teacher_forward"].append(timed(teacher_fwd))
        times["student_forward_backward"].append(timed(student_fwd_bwd))
        times["step"].append(timed(step))
        times["loss_clip_adamw"].append(trainer_work())
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the least disturbed run of each (shared machines)
    tokens = args.batch * args.seq_len
    return {
        "config": _config(args, teacher, student),
        "median_s": med, "min_s": best, "runs_s": times,
        "ratio": med["step"] / (med["teacher_forward"] + med["student_forward_backward"]),
        "ratio_of_minima": best["step"] / (best["teacher_forward"] + best["student_forward_backward"]),
        "trainer_work_share": med["loss_clip_adamw"] / (med["teacher_forward"] + med["student_forward_backward"]),
        "tokens_per_second": tokens / med["step"],
    }  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--vocab", type=int, default=131072)
    m.add_argument("--tokens", type=int, default=1024)
    m.add_argument("--chunk-size", type=int, default=0, help="0: the default (auto)")
    m.add_argument("--kinds", nargs="+", default=["forward-kl", "reverse-kl", "jsd"])
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--shape", choices=["logits", "train"], default="logits",
                   help="logits: the loss on given logits; train: logits from an lm_head, freed after the loss")
    m.add_argument("--threads", type=int, default=2)
    for name in ("step", "cached"):
        s = sub.add_parser(name)
        s.add_argument("--vocab", type=int, default=4096)
        s.add_argument("--hidden", type=int, default=384)
        s.add_argument("--teacher-pattern", default="M-M*M-M-M*M-")
        s.add_argument("--student-pattern", default="M-M*M-M-")
        s.add_argument("--seq-len", type=int, default=256)
        s.add_argument("--batch", type=int, default=4)
        s.add_argument("--chunk-size", type=int, default=None)
        s.add_argument("--repeats", type=int, default=5)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--top-k", type=int, default=64)
    args = ap.parse_args()
    doc = {"memory": bench_memory, "step": bench_step, "cached": bench_cached}[args.what](args)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
