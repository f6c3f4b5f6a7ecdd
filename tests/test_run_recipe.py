"""`minitron run`: a recipe is validated whole before any stage runs; each bad key is one line naming it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()


def _recipe(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "key"),
    [("model: demo-teacher\nout: o\nscroe: {}\n", "scroe"),
     ("model: demo-teacher\nout: o\nscore: {samplez: 4, data: [x.txt]}\n", "score.samplez"),
     ("model: demo-teacher\nout: o\nscore: {samples: many}\n", "score.samples"),
     ("model: demo-teacher\nout: o\nscore: {out: elsewhere}\n", "score.out"),
     ("model: demo-teacher\nout: o\nscore: {data: [missing.txt], samples: 4}\n", "score.data"),
     ("model: nemotron-nano-12b-v2-base\nout: o\nprune: {dry-run: true, target-params: 20B, gpu: a10g}\n",
      "prune.target-params"),  # not below the 12B's 12.3B (a parameter target and a budget may combine)
     ("model: nemotron-nano-12b-v2-base\nout: o\nprune: {dry-run: true, target-params: 9B, hidden-size: 4480}\n",
      "prune.hidden-size"),  # an exact shape and a searched target: two targets
     ("model: demo-teacher\nout: o\ndistill: {steps: 3}\n", "distill"),
     ("out: o\nscore: {}\n", "model")],
)
def test_bad_recipes_name_the_key_and_run_nothing(tmp_path, monkeypatch, text, key):
    monkeypatch.chdir(tmp_path)  # `out` is relative to the working directory
    r = runner.invoke(app, ["run", str(_recipe(tmp_path, text))])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), r.stderr
    assert not (tmp_path / "o").exists()


def test_the_demo_recipe_checks_and_shows_each_stage_as_a_command():
    r = runner.invoke(app, ["run", "demo", "--check", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc["stages"]) == ["score", "prune", "distill", "eval"]
    assert doc["stages"]["prune"][:3] == ["minitron", "prune", "demo-teacher"]
    assert "--scores" in doc["stages"]["prune"] and "--student" in doc["stages"]["distill"]


def test_a_prune_dry_run_recipe_on_the_paper_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `out` is relative to the working directory
    text = ("model: nemotron-nano-12b-v2-base\nout: o\nprune: {dry-run: true, hidden-size: 4480, ffn-size: 15680,\n"
            "  mamba-heads: 128, drop-layers: '7,8,17,18,48,52'}\n")
    r = runner.invoke(app, ["run", str(_recipe(tmp_path, text)), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stages"]["prune"]["doc"]["params_after"] == 8_888_227_328
    assert not (tmp_path / "o").exists()  # a recipe of dry runs writes no tree


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--until", "distill"], "--until"), (["--check", "--dry-run"], "--dry-run")],
)
def test_bad_run_options_are_one_line(tmp_path, monkeypatch, args, flag):
    monkeypatch.chdir(tmp_path)
    text = "model: demo-teacher\nout: o\nprune: {dry-run: true, hidden-size: 128}\n"
    r = runner.invoke(app, ["run", str(_recipe(tmp_path, text)), *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), r.stderr
    assert not (tmp_path / "o").exists()


def test_an_infeasible_distillation_budget_stops_the_recipe_before_any_stage(tmp_path, monkeypatch):
    """The distill memory plan is checked on the shape prune's dry run picks: exit 3 before score runs."""
    from minitron.cli.demo_cmd import demo_paths

    monkeypatch.chdir(tmp_path)
    _, train, _ = demo_paths()
    text = (f"model: demo-teacher\nout: o\nscore: {{data: [{train}], samples: 4}}\n"
            "prune: {hidden-size: 128}\n"
            f"distill: {{data: [{train}], steps: 2, memory-budget: 1MiB}}\n")
    r = runner.invoke(app, ["run", str(_recipe(tmp_path, text))])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith("error: distill.memory-budget") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
