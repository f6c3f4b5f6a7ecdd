"""Shared pieces of the distillation tests: a depth-pruned student of the tiny teacher, CLI args."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STUDENT_PATTERN_KEEP = [0, 1, 2, 3, 5, 6, 8]  # drop the MoE block (4) and the second attention block (7)


def make_pruned_student(teacher_dir: Path, dest: Path) -> Path:
    """The teacher with two blocks removed, weights copied from the kept blocks: a real pruned student."""
    import torch
    from transformers import AutoModelForCausalLM

    from minitron.testing import TINY_PATTERN, build_model, make_tiny_model_dir, tiny_config

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    pattern = "".join(TINY_PATTERN[i] for i in STUDENT_PATTERN_KEEP)
    student = build_model(tiny_config(hybrid_override_pattern=pattern), seed=5)
    t_sd = teacher.state_dict()
    s_sd = {}
    for k in student.state_dict():
        if ".layers." in k:
            head, rest = k.split(".layers.", 1)
            i, tail = rest.split(".", 1)
            s_sd[k] = t_sd[f"{head}.layers.{STUDENT_PATTERN_KEEP[int(i)]}.{tail}"]
        else:
            s_sd[k] = t_sd[k]
    student.load_state_dict(s_sd)
    make_tiny_model_dir(dest, cfg=tiny_config(hybrid_override_pattern=pattern), model=student)
    return dest


def base_args(teacher: Path, student: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(data), "--out", str(out),
            "--seq-len", "32", "--eval-samples", "4", "--lr", "3e-4", *extra]  # fmt: skip


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    return env


def run_cli(args: list[str], *, torchrun: int = 0, timeout: int = 180) -> subprocess.CompletedProcess:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun),
               "-m", "minitron", *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "minitron", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=timeout)


def run_cli_killed(args: list[str], partial: Path, step: int = 4, timeout: int = 120) -> None:
    """Start `minitron *args` and SIGKILL it as soon as its checkpoint of `step` is in `partial`; it must have
    been killed, not have finished."""
    cmd = [sys.executable, "-m", "minitron", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    ckpt = partial / "checkpoints" / f"step-{step:08d}.pt"
    deadline = time.time() + timeout
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(Path(out).glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def read_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())
