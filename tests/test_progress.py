"""Runs that are not in a terminal (CI logs, nohup, Slurm): periodic plain progress lines with rate
and ETA, and tables that keep every column."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from distill_helpers import base_args, make_pruned_student, subprocess_env

from minitron.cli.progress import Progress


def _run(args, **env):
    cmd = [sys.executable, "-m", "minitron", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**subprocess_env(), **env}, timeout=300)


def test_plain_lines_every_interval_with_rate_and_eta(monkeypatch):
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr("minitron.cli.progress.time.monotonic", lambda: next(clock))
    buf = io.StringIO()
    bar = Progress(unit="steps", terminal=False, interval=5, stream=buf)
    for step in range(1, 101):
        bar.update("distill", step, 100, f"loss {1 / step:.3f}")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("distill: 1/100 steps (1%)")
    assert lines[-1].startswith("distill: 100/100 steps (100%)") and "ETA 0:00" in lines[-1]
    assert all("elapsed" in x and "ETA" in x and "loss" in x for x in lines)
    assert "1.00 steps/s" in lines[-1]
    # one line every 5 s of the fake clock (one update a second) or 10 %, never one per update
    assert 10 <= len(lines) <= 25


def test_fast_loops_print_first_and_last_only():
    buf = io.StringIO()
    bar = Progress(terminal=False, interval=60, stream=buf)
    for i in range(1, 1001):
        bar.update("prune", i, 1000)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("prune: 1,000/1,000 (100%)")


def test_quiet_prints_nothing():
    buf = io.StringIO()
    bar = Progress(terminal=False, stream=buf, disable=True)
    bar.update("x", 1, 2)
    assert buf.getvalue() == ""


def test_prune_search_table_keeps_every_column_in_a_pipe(tiny_model_dir):
    total = json.loads(_run(["inspect", tiny_model_dir, "--json"]).stdout)["params"]["total"]
    r = _run(["prune", tiny_model_dir, "--target-params", int(total * 0.7), "--dry-run", "--candidates", "0",
              "--search", "hidden_size=32:64:16"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    header = next(x for x in r.stdout.splitlines() if "layers" in x and "hidden" in x)
    for col in ("#", "layers", "hidden", "ffn", "m.heads", "m.dim", "q", "kv", "params", "memory"):
        assert f" {col} " in header, (col, header)
    assert "…" not in r.stdout
    rows = [x for x in r.stdout.splitlines() if x.startswith("│")]
    ranks = [x.split("│")[1].strip() for x in rows]
    assert rows and all(r.removeprefix("*").isdigit() for r in ranks)  # the rank column is filled
    assert any(r.startswith("*") for r in ranks)  # and marks the shortlist


def test_distill_log_has_periodic_progress_lines(tiny_model_dir, text_file, tmp_path):
    student = make_pruned_student(tiny_model_dir, tmp_path / "student")
    args = base_args(tiny_model_dir, student, text_file, tmp_path / "out", "--steps", "6", "--eval-every", "3")
    r = _run(args, MINITRON_PROGRESS_SECONDS="0")
    assert r.returncode == 0, r.stderr
    steps = [x for x in r.stderr.splitlines() if x.startswith("distill: ")]
    assert [x.split()[1] for x in steps] == [f"{i}/6" for i in range(1, 7)]
    assert all("ETA" in x and "loss" in x and "tok/s" in x for x in steps)
    assert sum(x.startswith("eval @ step") for x in r.stderr.splitlines()) == 3
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr  # no terminal control codes in a log
