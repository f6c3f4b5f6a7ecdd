"""A distillation killed with SIGKILL and started again ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student, run_cli, run_cli_killed, weights


@pytest.fixture(scope="module")
def student_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_pruned_student(tiny_model_dir, tmp_path_factory.mktemp("student") / "pruned")


def test_sigkill_then_resume_equals_uninterrupted(tiny_model_dir, student_dir, text_file, tmp_path):
    steps = ["--steps", "10", "--save-every", "2", "--keep-last", "2", "--eval-every", "5", "--warmup-steps", "2",
             "--json"]  # fmt: skip
    ref = tmp_path / "ref"
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, ref, *steps))
    assert r.returncode == 0, r.stderr

    out = tmp_path / "run"
    part = tmp_path / "run.partial"
    run_cli_killed(base_args(tiny_model_dir, student_dir, text_file, out, *steps), part, step=4)
    assert not out.exists(), "an interrupted run must not leave --out"
    kept = sorted(p.name for p in (part / "checkpoints").glob("step-*.pt"))
    assert kept and len(kept) <= 2  # --keep-last

    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, out, *steps))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["resumed_from"] in (4, 6, 8) and doc["steps"] == 10
    assert not part.exists()
    a, b = weights(ref), weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics: every step logged once, the evaluation at the start kept from the first attempt
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval" not in x] == list(range(1, 11))
    assert [x["step"] for x in lines if "eval" in x] == [0, 5, 10]
    assert json.loads(r.stdout)["final_eval"] == json.loads((ref / "minitron.json").read_text())["result"]["final_eval"]
