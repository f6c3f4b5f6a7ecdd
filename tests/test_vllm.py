"""Results serve in vLLM: the demo teacher and a pruned model (every axis cut) load in vLLM's CPU build
and give transformers' greedy tokens; vLLM's own cache bytes per sequence equal the `--engine vllm`
memory model. Needs the vLLM environment of docs/serving.md ($MINITRON_VLLM_PYTHON); `.ci/run` builds
it, and under CI (`CI` set) a missing environment is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.evaluate.vllm_check import PYTHON_ENV, compare_greedy, vllm_state_bytes

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[1] / "minitron" / "assets" / "demo"
TEACHER = DEMO / "teacher"


def _vllm_python() -> str:
    py = os.environ.get(PYTHON_ENV)
    if not py:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {PYTHON_ENV} is not: .ci/run must build the vLLM environment")
        pytest.skip(f"no vLLM environment ({PYTHON_ENV}); see docs/serving.md")
    return py


@pytest.fixture(scope="module")
def pruned_demo(tmp_path_factory) -> Path:
    """The demo teacher scored on its corpus and pruned on every axis: hidden, FFN, Mamba heads and head
    dim, query and KV heads, and depth (one Mamba and one MLP layer)."""
    tmp = tmp_path_factory.mktemp("serve")
    r = runner.invoke(app, ["score", str(TEACHER), "--data", str(DEMO / "corpus" / "train.txt"), "--samples", "8",
                            "--seq-len", "64", "--out", str(tmp / "scores")])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prune", str(TEACHER), "--scores", str(tmp / "scores"), "--hidden-size", "192",
                            "--ffn-size", "384", "--mamba-heads", "12", "--mamba-head-dim", "12",
                            "--attention-heads", "4", "--kv-heads", "1", "--drop-layers", "4,5",
                            "--out", str(tmp / "pruned")])  # fmt: skip
    assert r.exit_code == 0, r.output
    return tmp / "pruned"


def test_teacher_and_pruned_serve_in_vllm_with_transformers_greedy_tokens(pruned_demo):
    py = _vllm_python()
    t, p = (json.loads((d / "config.json").read_text()) for d in (TEACHER, pruned_demo))
    for key in ("hidden_size", "intermediate_size", "mamba_num_heads", "mamba_head_dim", "num_attention_heads",
                "num_key_value_heads"):  # fmt: skip
        assert p[key] < t[key], key
    assert len(p["layers_block_type"]) == len(t["layers_block_type"]) - 2
    r = runner.invoke(app, ["eval", str(TEACHER), str(pruned_demo), "--vllm", "--vllm-python", py, "--vllm-eager",
                            "--prompt-len", "16", "--gen-len", "8", "--throughput-runs", "1", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [m["name"] for m in doc["models"]] == ["teacher", "pruned"]
    for m in doc["models"]:
        v = m["vllm"]
        assert v["greedy"]["prompts"] == 4 and v["greedy"]["tokens"] == 24
        assert v["greedy"]["equal"], (m["name"], v["greedy"])
        # vLLM's own per-layer cache specs, summed for one sequence, equal the memory model's vllm figure
        c = v["cache"]
        assert c["equal"], (m["name"], c["vllm_per_sequence"], c["memory_model_per_sequence"])
        mamba = [x for x in c["layers"] if "state_bytes" in x]
        cfg = t if m["name"] == "teacher" else p
        assert {tuple(x["shapes"][0]) for x in mamba} == {(cfg["conv_kernel"] - 1, _conv_dim(cfg))}  # vLLM's window
        assert v["throughput"]["generate_tokens_per_second"] > 0
        assert v["throughput"]["hf_generate_tokens_per_second"] > 0
    assert doc["models"][1]["relative"]["vllm_generate_tokens_per_second"] > 0
    # the table shows the check: agreement, both engines' tokens/s, vLLM's bytes (= the model's)
    import io

    from rich.console import Console

    from minitron.cli.eval_table import render

    buf = io.StringIO()
    render(doc, Console(file=buf, width=400))
    text = buf.getvalue()
    assert "gen tok/s vLLM" in text and text.count("yes 4/4") == 2 and text.count("(=)") == 2


def _conv_dim(cfg: dict) -> int:
    return cfg["mamba_num_heads"] * cfg["mamba_head_dim"] + 2 * cfg["n_groups"] * cfg["ssm_state_size"]


def test_compare_greedy_finds_the_first_difference():
    same = compare_greedy([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]])
    assert same["equal"] and same["prompts_equal"] == 2
    diff = compare_greedy([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]])
    assert not diff["equal"] and diff["prompts_equal"] == 1
    assert diff["per_prompt"][1]["first_mismatch"] == 1
    assert compare_greedy([[1, 2]], [[1]])["per_prompt"][0]["first_mismatch"] == 1


def test_vllm_state_bytes_sums_attention_tokens_and_mamba_states():
    cache = {"layers": [{"bytes_per_token": 256}, {"bytes_per_token": 256}, {"state_bytes": 1000}]}
    assert vllm_state_bytes(cache, 10) == {"kv_cache_bytes": 5120, "mamba_state_bytes": 1000, "total_bytes": 6120}


def test_missing_or_broken_vllm_environment_is_one_line_exit_2(tiny_model_dir, monkeypatch):
    monkeypatch.delenv(PYTHON_ENV, raising=False)
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--vllm"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--vllm-python" in r.stderr
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--vllm", "--vllm-python", sys.executable])
    assert r.exit_code == 2 and "cannot import vllm" in r.stderr


def test_vllm_state_shapes_of_the_bundled_configs_equal_the_memory_model():
    """The 12B and 9B reference configs (no weights) and the demo teacher: vLLM's own Nemotron-H state
    shape / dtype functions and attention page size, per sequence, equal `estimate(engine="vllm")`."""
    import subprocess

    from conftest import REF_9B, REF_12B

    from minitron.memory import estimate
    from minitron.models import Architecture

    py = _vllm_python()
    paths = [REF_12B, REF_9B, TEACHER]
    r = subprocess.run([py, str(Path(__file__).with_name("vllm_state_probe.py")), "bfloat16",
                        *(str(p / "config.json") for p in paths)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    for path, v in zip(paths, json.loads(r.stdout.strip().splitlines()[-1]), strict=True):
        arch = Architecture.from_path(path)
        ctx = 131072
        est = estimate(arch, context_length=ctx, dtype="bf16", engine="vllm")
        n_mamba, n_attn = len(arch.mamba_layers()), len(arch.attention_layers())
        assert v["conv_shape"] == [arch.conv_kernel - 1, arch.mamba_conv_dim], path
        assert est.mamba_state_bytes == n_mamba * v["mamba_state_bytes_per_layer"], path
        assert est.kv_cache_bytes == n_attn * ctx * v["kv_bytes_per_token_per_layer"], path
        assert est.per_sequence_bytes == est.mamba_state_bytes + est.kv_cache_bytes
