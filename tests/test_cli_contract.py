"""The contract every command keeps: help that renders with runnable examples, one `error:` line and
the documented exit code on bad input (usage errors too), one JSON document under --json — also on
error — and the global -q/-v accepted after the command name."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minitron.cli.main import COMMANDS, app, hoist_global_flags

runner = CliRunner()

# One bad input per command, as a user would type it; each must fail before any work with exit 2.
BAD = {
    "inspect": ["inspect", "/no/such/model"],
    "score": ["score", "/no/such/model", "--data", "/no/such.txt", "--out", "{tmp}/s"],
    "prune": ["prune", "/no/such/model", "--hidden-size", "8", "--dry-run"],
    "distill": ["distill", "--teacher", "/no/t", "--student", "/no/s", "--data", "/no/d.txt", "--out", "{tmp}/d",
                "--steps", "1"],
    "eval": ["eval", "/no/such/model"],
    "teacher-logits": ["teacher-logits", "/no/such/model", "--data", "/no/d.txt", "--out", "{tmp}/c"],
    "run": ["run", "/no/such/recipe.yaml"],
    "demo": ["demo", "--steps", "0", "--out", "{tmp}/demo"],
}


def _args(cmd, tmp_path):
    return [a.replace("{tmp}", str(tmp_path)) for a in BAD[cmd]]


def test_every_command_has_a_bad_input_case():
    assert set(BAD) == set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_renders_with_examples_and_no_dev_paths(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "Examples" in text and f"minitron {cmd}" in text
    assert "<bool>" not in text  # flags take no value
    assert "../shared" not in text and "nvidia/9b-dir" not in text
    assert "-q/--quiet and -v/--verbose" in text


def test_root_help_and_flags_without_bool_metavar():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "minitron demo" in r.stdout and "<bool>" not in r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(cmd, tmp_path):
    r = runner.invoke(app, _args(cmd, tmp_path))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", COMMANDS)
def test_json_error_document(cmd, tmp_path):
    r = runner.invoke(app, [*_args(cmd, tmp_path), "--json"])
    assert r.exit_code == 2
    doc = json.loads(r.stdout)  # one document, nothing else on stdout
    assert doc["exit_code"] == 2 and doc["error"] == r.stderr.strip().removeprefix("error: ")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_unknown_flag_is_a_one_line_usage_error(cmd):
    r = runner.invoke(app, [cmd, "--no-such-flag"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option: --no-such-flag"), r.stderr
    assert f"minitron {cmd} --help" in lines[0] and "╭" not in r.stderr
    r = runner.invoke(app, [cmd, "--no-such-flag", "--json"])
    assert json.loads(r.stdout)["exit_code"] == 2


def test_missing_required_option_is_one_line():
    r = runner.invoke(app, ["score", "some/model"])
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--data" in r.stderr and "╭" not in r.stderr


def test_quiet_and_verbose_after_the_command(tmp_path):
    for flags in (["-q"], ["--quiet"], ["-v"], ["-vv"], ["--verbose"]):
        r = runner.invoke(app, ["inspect", "nemotron-nano-9b-v2", *flags, "--json"])
        assert r.exit_code == 0, (flags, r.output)
        assert json.loads(r.stdout)["params"]["total"] == 8_888_227_328
    # -q after the command hides info lines as it does before it
    r = runner.invoke(app, ["demo", "--steps", "0", "-q"])
    assert r.exit_code == 2 and r.stderr.startswith("error: ")


def test_hoisting_keeps_option_values():
    from typer.main import get_command

    group = get_command(app)
    assert hoist_global_flags(["score", "m", "-q", "--data", "x"], group) == ["-q", "score", "m", "--data", "x"]
    # `-v` as the value of an option stays where it is
    assert hoist_global_flags(["score", "m", "--text-field", "-v"], group) == ["score", "m", "--text-field", "-v"]
    assert hoist_global_flags(["-v", "inspect", "m"], group) == ["-v", "inspect", "m"]


@pytest.mark.parametrize(
    ("args", "new"),
    [(["inspect", "nemotron-nano-9b-v2", "--dtype", "bf16"], "--memory-dtype"),
     (["inspect", "nemotron-nano-9b-v2", "--batch-size", "2"], "--sequences"),
     (["prune", "nemotron-nano-9b-v2", "--target-params", "8B", "--dry-run", "--top-k", "3"], "--candidates"),
     (["prune", "nemotron-nano-9b-v2", "--hidden-size", "4096", "--dry-run", "--dtype", "fp16"], "--memory-dtype")],
)
def test_renamed_flags_name_their_new_name(args, new):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"renamed to {new}" in r.stderr


def test_inspect_runs_with_its_defaults_and_names_dtype_and_context():
    r = runner.invoke(app, ["inspect", "nemotron-nano-12b-v2-base"])
    assert r.exit_code == 0, r.output
    assert "memory at 131,072 tokens x 1 sequence, weights/KV bf16" in r.stdout


def test_context_beyond_max_positions_is_warned(tiny_model_dir):
    r = runner.invoke(app, ["inspect", str(tiny_model_dir), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["memory"]["context_length"] == 512
    assert "max_position_embeddings" not in r.stderr
    r = runner.invoke(app, ["inspect", str(tiny_model_dir), "--context-length", "4096", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["memory"]["context_length"] == 4096
    assert "exceeds the model's max_position_embeddings (512)" in r.stderr
    r = runner.invoke(app, ["prune", str(tiny_model_dir), "--hidden-size", "32", "--dry-run", "--context-length",
                            "4096", "--json"])  # fmt: skip
    assert r.exit_code == 0 and "exceeds the model's max_position_embeddings (512)" in r.stderr


def test_eval_refuses_seq_len_beyond_max_positions_as_score_and_distill_do(tiny_model_dir, text_file, tmp_path):
    for args in (["eval", str(tiny_model_dir), "--data", str(text_file)],
                 ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(tmp_path / "s")]):
        r = runner.invoke(app, [*args, "--seq-len", "1024"])
        assert r.exit_code == 2, r.output
        assert "--seq-len" in r.stderr and "max_position_embeddings (512)" in r.stderr


def test_prune_and_eval_report_the_same_memory_figure(tiny_model_dir, text_file):
    r = runner.invoke(app, ["prune", str(tiny_model_dir), "--hidden-size", "64", "--dry-run", "--context-length", "256",
                            "--json"])  # fmt: skip
    before = json.loads(r.stdout)["memory_before"]
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", str(text_file), "--seq-len", "16", "--samples", "2",
                            "--context-length", "256", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    mem = json.loads(r.stdout)["models"][0]["memory"]
    assert mem == before and mem["dtype"] == "bf16"  # the memory model's dtype, not eval's fp32 compute dtype


def test_eval_task_dir_prints_the_bundled_tasks():
    from pathlib import Path

    r = runner.invoke(app, ["eval", "--task-dir"])
    assert r.exit_code == 0
    assert (Path(r.stdout.strip()) / "minitron_cloze" / "minitron_cloze.yaml").is_file()


def test_shell_completion_is_offered():
    r = runner.invoke(app, ["--help"])
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
