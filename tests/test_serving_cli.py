"""The engine-aware memory options on the command line: every term in --json, the deployment fit, and
one-line exit-2 errors for bad engine / KV dtype / prefill chunk in inspect, prune and eval."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()
TERMS = ("weights_bytes", "kv_cache_bytes", "mamba_state_bytes", "mamba_ssm_bytes", "mamba_conv_bytes",
         "prefill_activation_bytes", "logits_bytes", "total_bytes", "per_sequence_bytes")  # fmt: skip


def test_inspect_json_has_every_term_and_the_fit():
    r = runner.invoke(app, ["inspect", "nemotron-nano-9b-v2", "--gpu", "a10g", "--context-length", "131072", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    m, b = doc["memory"], doc["budget"]
    assert all(isinstance(m[k], int) for k in TERMS)
    assert m["total_bytes"] == sum(m[k] for k in TERMS[:3] + TERMS[5:7])
    assert (m["engine"], m["conv_window"], m["prefill_tokens"]) == ("vllm", 3, 2048)
    assert b["engine"] == "vllm" and b["fits"] and b["max_sequences"] == 1
    r = runner.invoke(app, ["inspect", "nemotron-nano-9b-v2", "--gpu", "h100-80gb", "--context-length", "131072",
                            "--kv-dtype", "fp8", "--json"])  # fmt: skip
    fp8 = json.loads(r.stdout)
    assert fp8["memory"]["kv_cache_bytes"] * 2 == m["kv_cache_bytes"]
    r = runner.invoke(app, ["inspect", "nemotron-nano-9b-v2", "--gpu", "h100-80gb", "--context-length", "131072", "--json"])
    assert fp8["budget"]["max_sequences"] > json.loads(r.stdout)["budget"]["max_sequences"]  # fp8 KV: more fit


def test_paper_budget_stays_explicit():
    r = runner.invoke(app, ["inspect", "nemotron-nano-9b-v2", "--gpu", "a10g", "--headroom", "0.05", "--reserve-gib",
                            "1.3", "--json"])  # fmt: skip
    assert round(json.loads(r.stdout)["budget"]["budget_gib"], 2) == 19.66


def test_prune_reports_sequences_before_and_after():
    r = runner.invoke(app, ["prune", "nemotron-nano-12b-v2-base", "--gpu", "a10g", "--context-length", "131072",
                            "--dry-run", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["budget"]["max_sequences_before"] == 0 and doc["budget"]["max_sequences"] >= 1
    assert doc["memory"]["total_bytes"] <= doc["budget"]["budget_bytes"]
    assert all(c["memory_bytes"] <= doc["budget"]["budget_bytes"] for c in doc["candidates"])


@pytest.mark.parametrize(("args", "flag"), [
    (["--engine", "trt"], "--engine"),
    (["--kv-dtype", "int4"], "--kv-dtype"),
    (["--prefill-chunk", "0"], "--prefill-chunk"),
])  # fmt: skip
@pytest.mark.parametrize("cmd", ["inspect", "prune", "eval"])
def test_bad_memory_options_are_one_line_exit_2(cmd, args, flag, tiny_model_dir):
    extra = {"inspect": [], "prune": ["--hidden-size", "32", "--dry-run"], "eval": []}[cmd]
    r = runner.invoke(app, [cmd, str(tiny_model_dir), *extra, *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and flag in lines[0], r.stderr


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_tensor_parallel_rules_search_and_per_gpu_memory():
    from conftest import REF_9B

    from minitron.memory import estimate
    from minitron.models import Architecture
    from minitron.tensor_parallel import problems

    arch = Architecture.from_path(REF_9B)
    one, two = estimate(arch, context_length=131072), estimate(arch, context_length=131072, tensor_parallel=2)
    assert two.weights_bytes * 2 == one.weights_bytes and two.kv_cache_bytes * 2 == one.kv_cache_bytes
    assert two.mamba_ssm_bytes * 2 == one.mamba_ssm_bytes and two.mamba_conv_bytes * 2 == one.mamba_conv_bytes
    # 16 GPUs > 8 KV heads: replicated, one head each; 8 groups do not divide over 16
    assert estimate(arch, context_length=131072, tensor_parallel=16).kv_cache_bytes * 8 == one.kv_cache_bytes
    assert {f for f, _ in problems(arch, 16)} == {"--tensor-parallel", "--attention-heads"}  # 40 q heads; 128 Mamba heads divide
    assert problems(arch, 2) == [] and problems(arch.with_(intermediate_size=15681), 2)[0][0] == "--ffn-size"
    r = runner.invoke(app, ["prune", "nemotron-nano-12b-v2-base", "--gpu", "a10g", "--context-length", "131072",
                            "--tensor-parallel", "4", "--candidates", "0", "--dry-run", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["candidates"] and all(not problems(arch.with_(
        hidden_size=c["hidden_size"], intermediate_size=c["ffn_size"], mamba_num_heads=c["mamba_heads"],
        num_attention_heads=c["attention_heads"], num_key_value_heads=c["kv_heads"]), 4) for c in doc["candidates"])
    assert doc["memory"]["tensor_parallel"] == 4


def test_tensor_parallel_errors():
    r = runner.invoke(app, ["prune", "nemotron-nano-12b-v2-base", "--ffn-size", "15681", "--dry-run",
                            "--tensor-parallel", "2"])  # fmt: skip
    assert r.exit_code == 2 and "--ffn-size" in _one_line(r) and "not divisible by TP 2" in r.stderr
    r = runner.invoke(app, ["prune", "nemotron-nano-12b-v2-base", "--gpu", "a10g", "--tensor-parallel", "3", "--dry-run"])
    assert r.exit_code == 2 and "Mamba groups" in _one_line(r)  # no width can satisfy TP 3
    r = runner.invoke(app, ["inspect", "nemotron-nano-9b-v2", "--tensor-parallel", "0"])
    assert r.exit_code == 2 and "--tensor-parallel" in _one_line(r)
    r = runner.invoke(app, ["prune", "nemotron-nano-12b-v2-base", "--memory-budget", "3GiB", "--context-length",
                            "131072", "--tensor-parallel", "2", "--dry-run"])  # fmt: skip
    assert r.exit_code == 3 and "smallest the search space reaches" in _one_line(r)
