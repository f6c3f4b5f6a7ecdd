"""Peak host memory per rank of `distill --fsdp`: sharded loading vs the former full-copy loading.

  python benchmarks/bench_fsdp_load.py [--repeats 3] [--steps 2] [--work DIR]

A random NemotronH teacher and student (bf16 safetensors shards of 100 MB, as published checkpoints
are; 111M + 87M parameters, 0.74 GiB in the fp32 the CPU run computes in) are written once;
then, for each loading path (`--fsdp-load sharded`, `--fsdp-load full`) and each repeat, interleaved,
`torchrun --nproc-per-node 2` (gloo, CPU) runs this file's worker, which on every rank calls the
library exactly as `minitron distill --fsdp` does and reports its peak RSS (`ru_maxrss`): after the
two models are loaded and sharded (`load`: loading alone), and in a separate launch after `--steps`
training steps and the written result (`run`); `baseline` is the same launch with the checks, the
tokenizer and the data but no model (what `load` adds to it is the models' share). Medians over the repeats, per rank; the
memory plan's CPU figure for 2 devices with FSDP2 (`memory_plan.plan`) beside them.
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

MODEL = dict(hidden=1024, vocab=16384, teacher="M-M*M-M-M*M-", student="M-M*M-M-")
SEQ_LEN, MICRO = 64, 1


def _make(work: Path):
    """Teacher and student in bf16 shards, as published checkpoints are (the run computes in fp32 on CPU)."""
    import torch

    from minitron.testing import build_model, make_tiny_model_dir, tiny_config

    h = MODEL["hidden"]
    common = dict(vocab_size=MODEL["vocab"], hidden_size=h, intermediate_size=4 * h, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=h // 8, mamba_num_heads=h // 16, mamba_head_dim=32, n_groups=2,
                  ssm_state_size=32, chunk_size=64, max_position_embeddings=4096, torch_dtype="bfloat16")  # fmt: skip
    dirs = []
    for name, seed in (("teacher", 0), ("student", 1)):
        d = work / name
        if not d.is_dir():
            cfg = tiny_config(hybrid_override_pattern=MODEL[name], **common)
            model = build_model(cfg, seed=seed).to(torch.bfloat16)
            make_tiny_model_dir(d, cfg=cfg, model=model, max_shard_size="100MB")
        dirs.append(d)
    t, s = dirs
    data = work / "data.txt"
    words = "the quick brown fox jumps over the lazy dog while hybrid models mix mamba and attention layers"
    data.write_text((words + " ") * 400)
    return t, s, data


def worker(spec: dict) -> None:
    """Run under torchrun: one rank's part of `distill --fsdp`; write this rank's peak RSS."""
    import resource

    import torch

    from minitron import distributed as dist
    from minitron.distill.trainer import TrainConfig
    from minitron.recipes.distill import DistillOptions, load_models, prepare, run_distill

    torch.set_num_threads(1)
    opts = DistillOptions(teacher=Path(spec["teacher"]), student=Path(spec["student"]), data=[Path(spec["data"])],
                          out=Path(spec["out"]), train=TrainConfig(steps=spec["steps"], micro_batch_size=MICRO),
                          seq_len=SEQ_LEN, eval_samples=1, save_every=0, device="cpu", fsdp=True,
                          fsdp_load=spec["load"])  # fmt: skip
    with dist.session("cpu"):
        if spec["what"] == "baseline":  # everything but the models: Python, torch, transformers, data
            prepare(opts)
        elif spec["what"] == "load":
            load_models(prepare(opts))
        else:
            run_distill(opts)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        Path(spec["report"], f"rank{dist.rank()}.json").write_text(json.dumps({"peak": peak}))


def _launch(spec: dict) -> list[int]:
    report = Path(tempfile.mkdtemp(prefix="fsdp-load-report-"))
    spec = {**spec, "report": str(report)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, "worker",
           json.dumps(spec)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return [json.loads((report / f"rank{i}.json").read_text())["peak"] for i in range(2)]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        return worker(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    from minitron.distill.memory_plan import PlanInput, plan
    from minitron.models.architecture import Architecture

    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-fsdp-load-"))
    work.mkdir(parents=True, exist_ok=True)
    t, s, data = _make(work)
    ta, sa = Architecture.from_path(t), Architecture.from_path(s)
    load_before = os.getloadavg()
    peaks: dict[tuple[str, str], list[list[int]]] = {}
    for i in range(args.repeats):
        for what in ("baseline", "load", "run"):
            for load in ("sharded", "full") if what != "baseline" else ("sharded",):
                out = work / f"out-{what}-{load}-{i}"
                spec = {"what": what, "load": load, "teacher": str(t), "student": str(s), "data": str(data),
                        "steps": args.steps, "out": str(out)}  # fmt: skip
                peaks.setdefault((what, load), []).append(_launch(spec))
                print(json.dumps({"repeat": i, "what": what, "load": load, "peak_per_rank": peaks[(what, load)][-1]}),
                      file=sys.stderr)  # fmt: skip
    p = plan(PlanInput(teacher=ta, student=sa, seq_len=SEQ_LEN, micro_batch_size=MICRO, devices=2, fsdp=True))
    weights = (ta.total_params + sa.total_params) * 4
    rows = {f"{what}/{load}": {"median_peak_per_rank": [statistics.median(r[k] for r in runs) for k in range(2)],
                               "runs": runs}
            for (what, load), runs in peaks.items()}  # fmt: skip
    print(json.dumps({"teacher_params": ta.total_params, "student_params": sa.total_params,
                      "fp32_weights_bytes": weights, "plan_2_devices_fsdp": p["total"], "plan_terms": p["terms"],
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
                      "results": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
