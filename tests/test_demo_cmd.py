"""`minitron demo`: bad options fail in one line before anything is written; the full run keeps its JSON contract."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--steps", "0"], "--steps"), (["--budget-fraction", "1.5"], "--budget-fraction"),
     (["--budget-fraction", "0.01"], "--budget-fraction"),
     (["--teacher", "bogus"], "--teacher"), (["--teacher", "moe", "--budget-fraction", "0.5"], "--budget-fraction"),
     (["--teacher", "moe", "--steps", "0"], "--steps")],
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


def test_an_earlier_demo_output_is_replaced_but_nothing_else(tmp_path):
    from minitron.cli.demo_cmd import made_by_demo

    out = tmp_path / "demo"
    out.mkdir()
    assert not made_by_demo(out)
    (out / "minitron.json").write_text('{"command": "prune"}')
    assert not made_by_demo(out)
    (out / "minitron.json").write_text('{"command": "demo"}')
    assert made_by_demo(out)
    (out / "minitron.json").write_text("not json")
    assert not made_by_demo(out)


# The end-to-end run of the demo is tests/test_readme.py: the README's first command, as written.


def test_help_documents_the_moe_teacher():
    r = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "--teacher" in r.stdout and "moe" in r.stdout and "REAP" in r.stdout


def test_moe_demo_runs_the_pipeline_with_expert_pruning(tmp_path):
    import json

    from minitron.cli.demo_cmd import demo_paths

    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--teacher", "moe", "--out", str(out), "--steps", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    teacher_dir = demo_paths("moe")[0]
    cfg = json.loads((teacher_dir / "config.json").read_text())
    assert doc["teacher"] == "moe" and [m["name"] for m in doc["models"]] == ["teacher", "pruned", "distilled"]
    assert doc["plan"]["experts"] == cfg["n_routed_experts"] // 2 and doc["plan"]["moe_ffn_size"] < cfg["moe_intermediate_size"]
    teacher, pruned, distilled = doc["models"]
    assert pruned["params"] == distilled["params"] < teacher["params"]
    assert teacher["kl"] == 0.0 and pruned["kl"] > 0.0
    written = json.loads((out / "pruned" / "config.json").read_text())
    assert written["n_routed_experts"] == doc["plan"]["experts"]
    assert written["moe_intermediate_size"] == doc["plan"]["moe_ffn_size"]
    prov = json.loads((out / "minitron.json").read_text())
    assert prov["command"] == "demo" and prov["options"]["teacher"] == "moe"
