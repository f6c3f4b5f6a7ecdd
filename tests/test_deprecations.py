"""No call of minitron's uses an API transformers has deprecated (its next minor release removes
them): scoring, the cache-driven decode loop and distillation run with FutureWarning as an error."""

from __future__ import annotations

import subprocess
import sys
import warnings

import torch
from distill_helpers import subprocess_env


def test_score_runs_with_future_warnings_as_errors(tiny_model_dir, text_file, tmp_path):
    cmd = [sys.executable, "-W", "error::FutureWarning", "-m", "minitron", "score", str(tiny_model_dir),
           "--data", str(text_file), "--samples", "4", "--seq-len", "32", "--out", str(tmp_path / "s"), "-v"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FutureWarning" not in r.stderr and "removed in" not in r.stderr


def test_decode_loop_uses_the_current_cache_api(tiny_model_dir):
    from minitron.evaluate.throughput import run_once
    from minitron.models.checkpoint import load_model

    model = load_model(tiny_model_dir, dtype="fp32", device="cpu")
    ids = torch.randint(3, 200, (1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, _, generated = run_once(model, ids, 4)
    ref = model.generate(ids, max_new_tokens=4, do_sample=False)[:, 8:]
    assert torch.equal(generated, ref)  # the cache really carried the state
