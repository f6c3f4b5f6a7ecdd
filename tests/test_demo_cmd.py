"""`minitron demo`: bad options fail in one line before anything is written; the full run keeps its JSON contract."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--steps", "0"], "--steps"), (["--budget-fraction", "1.5"], "--budget-fraction"),
     (["--budget-fraction", "0.01"], "--budget-fraction")],
)
def test_bad_options_exit_2_and_write_nothing(tmp_path, args, flag):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["demo", "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_demo_runs_end_to_end_and_distillation_helps(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--steps", "12", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [m["name"] for m in doc["models"]] == ["teacher", "pruned", "distilled"]
    for m in doc["models"]:
        assert set(m) >= {"name", "path", "params", "memory_bytes", "loss", "perplexity", "kl"}
        AutoModelForCausalLM.from_pretrained(m["path"], dtype=torch.float32)  # stock transformers loads each
    teacher, pruned, distilled = doc["models"]
    assert pruned["memory_bytes"] <= doc["budget_bytes"] < teacher["memory_bytes"]
    assert pruned["params"] == distilled["params"] < 0.65 * teacher["params"]
    assert distilled["loss"] < pruned["loss"] and distilled["kl"] < pruned["kl"]
    assert teacher["kl"] == pytest.approx(0.0, abs=1e-6)
    assert doc["seconds"] > 0 and set(doc["stage_seconds"]) == {"inspect", "score", "prune", "distill", "eval"}
    assert (out / "minitron.json").is_file() and (out / "scores" / "scores.safetensors").is_file()
