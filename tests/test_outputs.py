"""Output directories: validated before any work, locked while a run writes them, nothing left on
error, stale temporaries of a killed run removed, ordinary file permissions, provenance by content."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
from distill_helpers import base_args, make_pruned_student, subprocess_env
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.io import check_output_dir, release_outputs

runner = CliRunner()
MODE = 0o666 & ~(lambda m: (os.umask(m), m)[1])(os.umask(0))


@pytest.fixture(scope="module")
def scores_dir(random_scores_dir):
    return random_scores_dir


@pytest.fixture(scope="module")
def student_dir(tiny_model_dir, tmp_path_factory):
    return make_pruned_student(tiny_model_dir, tmp_path_factory.mktemp("student") / "pruned")


def _prune(model, scores, out, *extra):
    return runner.invoke(app, ["prune", str(model), "--scores", str(scores), "--hidden-size", "48", "--out", str(out),
                               *extra])  # fmt: skip


def test_out_under_a_file_fails_before_any_work(tiny_model_dir, text_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    t = time.perf_counter()
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(f / "sub")])
    assert r.exit_code == 2 and "--out" in r.stderr and "is a file" in r.stderr
    assert time.perf_counter() - t < 5  # refused up front, not after scoring
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_out_fails_up_front(tiny_model_dir, scores_dir, tmp_path):
    mine = tmp_path / "ro"
    mine.mkdir()
    mine.chmod(0o555)  # enough for an ordinary user; root writes anyway, so also a read-only mount
    ro = next((str(p) for p in (mine, "/proc/sys", "/sys") if os.path.isdir(p) and not os.access(p, os.W_OK)), None)
    assert ro is not None, "this machine has no read-only directory to test with"
    r = _prune(tiny_model_dir, scores_dir, f"{ro}/minitron-out")
    assert r.exit_code == 2 and "permission denied" in r.stderr and "--out" in r.stderr


def test_an_error_after_the_check_leaves_no_parents(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "a" / "b" / "c"
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(empty), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_out_inside_or_containing_the_input_is_refused(tiny_model_copy, scores_dir, tmp_path):
    r = _prune(tiny_model_copy, scores_dir, tiny_model_copy / "pruned")
    assert r.exit_code == 2 and "inside the input" in r.stderr
    r = _prune(tiny_model_copy, scores_dir, tmp_path, "--overwrite")
    assert r.exit_code == 2 and "contains the input" in r.stderr


def test_an_output_in_use_is_refused_at_once_and_left_alone(tiny_model_dir, scores_dir, tmp_path):
    out = tmp_path / "pruned"
    check_output_dir(out)  # this process holds the lock, as a running prune would
    try:
        cmd = [sys.executable, "-m", "minitron", "prune", str(tiny_model_dir), "--scores", str(scores_dir),
               "--hidden-size", "48", "--out", str(out)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120)
        assert r.returncode == 2 and "in use by another minitron run" in r.stderr, r.stderr
        assert f"pid {os.getpid()}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert (tmp_path / ".pruned.lock").is_file() and not out.exists()
    finally:
        release_outputs()
    assert list(tmp_path.iterdir()) == []  # the lock goes with its holder
    assert _prune(tiny_model_dir, scores_dir, out).exit_code == 0


def test_two_distills_to_one_out_one_wins_the_other_fails_fast(tiny_model_dir, student_dir, text_file, tmp_path):
    out = tmp_path / "run"
    args = base_args(tiny_model_dir, student_dir, text_file, out, "--steps", "150", "--save-every", "50")
    cmd = [sys.executable, "-m", "minitron", *args]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    deadline = time.time() + 120
    while not (tmp_path / ".run.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    t = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert second.returncode == 2 and "in use by another minitron run" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and time.perf_counter() - t < 30
    assert first.wait(timeout=300) == 0, first.stderr.read()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval" not in x] == list(range(1, 151))  # the winner's log, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_stale_temporaries_of_a_killed_run_are_removed(tiny_model_dir, scores_dir, tmp_path):
    stale = tmp_path / ".pruned.tmp-abc123"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half a shard")
    (tmp_path / ".pruned.old-999").mkdir()
    r = _prune(tiny_model_dir, scores_dir, tmp_path / "pruned")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    assert "left by an interrupted run" in r.stderr


def _modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_every_output_file_has_ordinary_permissions(tiny_model_dir, student_dir, scores_dir, text_file, tmp_path):
    assert _prune(tiny_model_dir, scores_dir, tmp_path / "pruned").exit_code == 0
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", str(text_file), "--seq-len", "16", "--samples", "2",
                            "--out", str(tmp_path / "eval")])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, base_args(tiny_model_dir, student_dir, text_file, tmp_path / "distilled", "--steps", "2"))
    assert r.exit_code == 0, r.output
    for d in ("pruned", "eval", "distilled"):
        modes = _modes(tmp_path / d)
        assert "minitron.json" in modes
        assert set(modes.values()) == {MODE}, (d, modes)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["models"][0]["loss"] is not None


def test_prune_provenance_has_content_hashes_of_the_scores(tiny_model_dir, scores_dir, tmp_path):
    from minitron.io import file_sha256

    assert _prune(tiny_model_dir, scores_dir, tmp_path / "pruned").exit_code == 0
    prov = json.loads((tmp_path / "pruned" / "minitron.json").read_text())["inputs"]
    assert prov["scores"]["path"] == str(scores_dir.resolve())
    assert prov["scores"]["sha256"]["scores.safetensors"] == file_sha256(scores_dir / "scores.safetensors")


def test_distill_max_shard_size(tiny_model_dir, student_dir, text_file, tmp_path):
    out = tmp_path / "d"
    r = runner.invoke(app, base_args(tiny_model_dir, student_dir, text_file, out, "--steps", "1",
                                     "--max-shard-size", "200KB"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    r = runner.invoke(app, base_args(tiny_model_dir, student_dir, text_file, tmp_path / "e", "--steps", "1",
                                     "--max-shard-size", "huge"))  # fmt: skip
    assert r.exit_code == 2 and "--max-shard-size" in r.stderr and not (tmp_path / "e").exists()
