"""`distill --dry-run`'s memory plan against the measured peak RSS of real runs on CPU.

  python benchmarks/bench_memory_plan.py [--sizes small medium] [--steps 2]

For each size: a random teacher and a depth-pruned-shape student (transformers' NemotronH, fp32) are
written to a temporary directory, then `run_distill` runs `--steps` steps in a fresh subprocess and
reports its peak RSS (`ru_maxrss`); the plan is `memory_plan.plan` for the same options. Variants:
resident teacher, gradient checkpointing, cached teacher logits, and `--intermediate-weight 10` without
and with checkpointing (the student is the teacher's first layers, with a prune record). Also the RSS of the bare runtime
(Python + torch + transformers + minitron + the tokenizer), the plan's `runtime` term.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {
    "small": dict(hidden=384, vocab=4096, seq_len=256, batch=4, teacher="M-M*M-M-M*M-", student="M-M*M-M-"),
    "medium": dict(hidden=768, vocab=8192, seq_len=256, batch=2, teacher="M-M*M-M-M*M-M-", student="M-M*M-M-"),
}

# (name, gradient checkpointing, cached teacher logits, --intermediate-weight)
VARIANTS = (("resident", False, False, 0.0), ("checkpointing", True, False, 0.0), ("cached", False, True, 0.0),
            ("intermediate", False, False, 10.0), ("intermediate+checkpointing", True, False, 10.0))  # fmt: skip

CHILD = r"""
import json, resource, sys
from pathlib import Path
spec = json.loads(sys.argv[1])
if spec["what"] == "runtime":
    import torch, transformers, minitron.recipes.distill
    from minitron.models.checkpoint import load_tokenizer
    load_tokenizer(spec["teacher"])
else:
    import torch
    torch.set_num_threads(2)
    from minitron.recipes.distill import DistillOptions, run_distill
    from minitron.distill.trainer import TrainConfig
    cfg = TrainConfig(steps=spec["steps"], micro_batch_size=spec["batch"], lr=1e-4, intermediate_weight=spec["iw"])
    run_distill(DistillOptions(teacher=Path(spec["teacher"]), student=Path(spec["student"]), data=[Path(spec["data"])],
                out=Path(spec["out"]), train=cfg, seq_len=spec["seq_len"], eval_samples=1, save_every=0,
                device="cpu", gradient_checkpointing=spec["ckpt"], teacher_logits=spec["cache"]))
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _make(size: dict, work: Path):
    from minitron.testing import make_tiny_model_dir, tiny_config

    h = size["hidden"]
    common = dict(vocab_size=size["vocab"], hidden_size=h, intermediate_size=4 * h, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=h // 8, mamba_num_heads=h // 16, mamba_head_dim=32, n_groups=2,
                  ssm_state_size=32, chunk_size=64, max_position_embeddings=4096)  # fmt: skip
    t = make_tiny_model_dir(work / "teacher", cfg=tiny_config(hybrid_override_pattern=size["teacher"], **common),
                            max_shard_size="2GB")  # fmt: skip
    s = make_tiny_model_dir(work / "student", cfg=tiny_config(hybrid_override_pattern=size["student"], **common),
                            seed=1, max_shard_size="2GB")  # fmt: skip
    # the student is the teacher's first layers: its prune record gives --intermediate-weight the layer map
    n_t, n_s = len(size["teacher"]), len(size["student"])
    (s / "minitron.json").write_text(json.dumps({"command": "prune", "result": {"indices": {
        "dropped_layers": list(range(n_s, n_t))}}}))  # fmt: skip
    data = work / "data.txt"
    words = "the quick brown fox jumps over the lazy dog while hybrid models mix mamba and attention layers"
    data.write_text((words + " ") * 3000)
    return t, s, data


def _child(spec: dict) -> int:
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                       env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    from minitron.distill.memory_plan import PlanInput, plan
    from minitron.models.architecture import Architecture
    from minitron.recipes.teacher_logits import TeacherLogitsOptions, run_teacher_logits

    rows = []
    for name in args.sizes:
        size = SIZES[name]
        work = Path(tempfile.mkdtemp(prefix=f"minitron-memplan-{name}-"))
        t, s, data = _make(size, work)
        runtime = _child({"what": "runtime", "teacher": str(t)})
        cache = work / "cache"
        run_teacher_logits(TeacherLogitsOptions(model=t, data=[data], out=cache, seq_len=size["seq_len"], top_k=64,
                                                device="cpu"))  # fmt: skip
        ta, sa = Architecture.from_path(t), Architecture.from_path(s)
        for variant, ckpt, cached, iw in VARIANTS:
            spec = {"what": "run", "teacher": str(t), "student": str(s), "data": str(data), "steps": args.steps,
                    "out": str(work / f"out-{variant}"), "seq_len": size["seq_len"], "batch": size["batch"],
                    "ckpt": ckpt, "cache": str(cache) if cached else None, "iw": iw}  # fmt: skip
            peak = _child(spec)
            p = plan(PlanInput(teacher=ta, student=sa, seq_len=size["seq_len"], micro_batch_size=size["batch"],
                               cached_teacher=cached, gradient_checkpointing=ckpt, intermediate=iw > 0))  # fmt: skip
            rows.append({"size": name, "variant": variant, "teacher_params": ta.total_params,
                         "student_params": sa.total_params, "measured_peak_rss": peak, "plan_total": p["total"],
                         "plan_over_measured": p["total"] / peak, "runtime_rss": runtime, "terms": p["terms"]})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
