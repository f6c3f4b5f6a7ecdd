"""`torchrun --nproc-per-node 2 -m minitron distill` on CPU (gloo): DDP and FSDP2 equal one process.

Same global batch (4 blocks), same micro-batch (2 blocks): one process accumulates two micro-batches,
two processes take one each. Real torch.distributed, real subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student, run_cli, weights

ARGS = ["--steps", "3", "--global-batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2", "--save-every", "2",
        "--json"]  # fmt: skip


@pytest.fixture(scope="module")
def student_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_pruned_student(tiny_model_dir, tmp_path_factory.mktemp("student") / "pruned")


@pytest.fixture(scope="module")
def single(tiny_model_dir, student_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, out, *ARGS))
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def _check_equal(single, out, r, student_dir):
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)  # rank 0 alone prints: exactly one JSON document
    ref_out, ref = single
    assert doc["world_size"] == 2 and ref["world_size"] == 1
    assert doc["steps"] == ref["steps"] == 3 and doc["tokens"] == ref["tokens"]
    for key in ("initial_eval", "final_eval"):
        for m in ("kl", "loss"):
            assert doc[key][m] == pytest.approx(ref[key][m], rel=1e-5)
    assert doc["train"]["loss"] == pytest.approx(ref["train"]["loss"], rel=1e-5)
    a, b, s = weights(ref_out), weights(out), weights(student_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(a[k], s[k]) for k in a)  # it trained
    assert not Path(f"{out}.partial").exists()


def test_ddp_two_processes_equal_one(tiny_model_dir, student_dir, text_file, tmp_path, single):
    out = tmp_path / "ddp"
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, out, *ARGS), torchrun=2)
    _check_equal(single, out, r, student_dir)


def test_fsdp2_two_processes_equal_one(tiny_model_dir, student_dir, text_file, tmp_path, single):
    out = tmp_path / "fsdp"
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, out, *ARGS, "--fsdp"), torchrun=2)
    _check_equal(single, out, r, student_dir)


def test_fsdp_needs_torchrun(tiny_model_dir, student_dir, text_file, tmp_path):
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "o", "--steps", "1", "--fsdp"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --fsdp:")
