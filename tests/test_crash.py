"""SIGKILL at three points of prune and of distill, then the same command again: no temporary or lock
is left, and the result equals that of an uninterrupted run (`MINITRON_FAULT`, minitron/faults.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from distill_helpers import base_args, make_pruned_student, subprocess_env, weights


def _run(args, fault=None):
    env = subprocess_env()
    if fault:
        env["MINITRON_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "minitron", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name != name)


@pytest.fixture(scope="module")
def scores_dir(random_scores_dir):
    return random_scores_dir


@pytest.fixture(scope="module")
def prune_reference(tiny_model_dir, scores_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "pruned"
    r = _run(_prune_args(tiny_model_dir, scores_dir, out))
    assert r.returncode == 0, r.stderr
    return out


def _prune_args(model, scores, out):
    return ["prune", model, "--scores", scores, "--hidden-size", "48", "--ffn-size", "64", "--mamba-heads", "4",
            "--num-layers", "7", "--max-shard-size", "100KB", "--out", out]  # fmt: skip


@pytest.mark.parametrize("fault", ["claimed", "prune-tensor-written", "before-rename"])
def test_prune_killed_then_rerun(tiny_model_dir, scores_dir, prune_reference, tmp_path, fault):
    out = tmp_path / "pruned"
    r = _run(_prune_args(tiny_model_dir, scores_dir, out), fault)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    if fault != "claimed":
        assert any(p.name.startswith(".pruned.tmp-") for p in tmp_path.iterdir())  # the kill left a temporary
    r = _run(_prune_args(tiny_model_dir, scores_dir, out))
    assert r.returncode == 0, r.stderr
    assert _leftovers(tmp_path, "pruned") == []
    a, b = weights(prune_reference), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "config.json").read_text()) == json.loads((prune_reference / "config.json").read_text())


@pytest.fixture(scope="module")
def student_dir(tiny_model_dir, tmp_path_factory):
    return make_pruned_student(tiny_model_dir, tmp_path_factory.mktemp("student") / "pruned")


@pytest.fixture(scope="module")
def distill_reference(tiny_model_dir, student_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("dref") / "run"
    r = _run(_distill_args(tiny_model_dir, student_dir, text_file, out))
    assert r.returncode == 0, r.stderr
    return out


def _distill_args(teacher, student, data, out):
    return base_args(teacher, student, data, out, "--steps", "6", "--save-every", "2", "--warmup-steps", "1")


@pytest.mark.parametrize("fault", ["claimed", "checkpoint-saved", "before-rename"])
def test_distill_killed_then_rerun(tiny_model_dir, student_dir, text_file, distill_reference, tmp_path, fault):
    out = tmp_path / "run"
    r = _run(_distill_args(tiny_model_dir, student_dir, text_file, out), fault)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    r = _run(_distill_args(tiny_model_dir, student_dir, text_file, out))
    assert r.returncode == 0, r.stderr
    assert _leftovers(tmp_path, "run") == []  # no run.partial, no .run.tmp-*, no lock
    a, b = weights(distill_reference), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "eval" not in x]
    assert steps == list(range(1, 7))
