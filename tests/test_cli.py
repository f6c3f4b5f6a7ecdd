"""The CLI contract: --help with examples everywhere, --version, --json purity, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REF_9B, REF_12B
from typer.testing import CliRunner

from minitron import __version__
from minitron.cli.main import COMMANDS, app

runner = CliRunner()


def _registered():
    import importlib.util

    return [c for c in COMMANDS if importlib.util.find_spec(f"minitron.cli.{c}_cmd") is not None]


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"minitron {__version__}"


@pytest.mark.parametrize("cmd", _registered())
def test_every_command_has_help_with_examples(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Examples" in r.stdout and f"minitron {cmd}" in r.stdout
    assert "--json" in r.stdout


def test_inspect_reference_9b_fits_a10g_json():
    r = runner.invoke(
        app,
        ["inspect", str(REF_9B), "--gpu", "a10g", "--headroom", "0.05", "--reserve-gib", "1.3",
         "--state-dtype", "bf16", "--json"],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["model_type"] == "nemotron_h" and doc["num_layers"] == 56
    assert doc["params"]["total"] == 8_888_227_328
    assert set(doc["params"]) >= {"total", "embedding", "lm_head", "mamba", "attention", "mlp", "norm"}
    m = doc["memory"]
    assert set(m) >= {"context_length", "batch_size", "weights_bytes", "kv_cache_bytes", "mamba_state_bytes", "total_bytes"}
    assert m["kv_cache_bytes"] == 4 * 2 * 8 * 128 * 131072 * 2
    assert doc["budget"]["gpu"] == "a10g" and doc["budget"]["fits"] is True


def test_inspect_12b_does_not_fit_and_bundled_name_works():
    r = runner.invoke(app, ["inspect", "nemotron-nano-12b-v2-base", "--gpu", "a10g", "--headroom", "0.05",
                            "--reserve-gib", "1.3", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["params"]["total"] == 12_310_001_152 and doc["budget"]["fits"] is False


def test_inspect_human_output(tiny_model_dir):
    r = runner.invoke(app, ["inspect", str(tiny_model_dir), "--gpu", "l4"])
    assert r.exit_code == 0, r.output
    assert "tensors checked" in r.stdout and "fits" in r.stdout and "total" in r.stdout


def _write(p, text):
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda t: t / "nope", "no such file"),
        (lambda t: t, "has no config.json"),
        (lambda t: _write(t / "config.json", "{not json"), "malformed JSON"),
        (lambda t: _write(t / "config.json", json.dumps({"model_type": "gpt2"})), "unsupported model_type"),
    ],
)
def test_inspect_bad_input_is_one_line_exit_2(tmp_path, make, needle):
    path = make(tmp_path)
    r = runner.invoke(app, ["inspect", str(path)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in r.output


def test_inspect_broken_shard_exit_2(tiny_model_copy):
    shard = sorted(tiny_model_copy.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    r = runner.invoke(app, ["inspect", str(tiny_model_copy)])
    assert r.exit_code == 2 and "truncated" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_option_values_exit_2():
    r = runner.invoke(app, ["inspect", str(REF_12B), "--gpu", "tpu"])
    assert r.exit_code == 2 and "--gpu" in r.stderr
    r = runner.invoke(app, ["inspect", str(REF_12B), "--dtype", "int4"])
    assert r.exit_code == 2 and "--dtype" in r.stderr
    r = runner.invoke(app, ["inspect", str(REF_12B), "--no-such-flag"])
    assert r.exit_code == 2


def test_console_script_and_debug_traceback(tmp_path):
    """The installed entry point end to end; MINITRON_DEBUG=1 adds the traceback."""
    import os

    cmd = [sys.executable, "-m", "minitron", "inspect", str(tmp_path / "missing")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MINITRON_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr
