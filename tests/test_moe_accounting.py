"""MoE parameter accounting: total and active per token, against transformers' own modules on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.models import Architecture
from minitron.models.tensors import canonical_name
from minitron.testing import tiny_config

REF_NANO3 = REFERENCE / "nemotron-3-nano-30b-a3b"


def _meta_model(cfg: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))


def counted_active(model, top_k: int) -> tuple[int, int]:
    """(total, active) counted from a built model: each fused [E, ...] routed-expert tensor counts
    `top_k / E` of its size toward the active figure, every other parameter in full."""
    total = active = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if canonical_name(name).endswith(("experts.up_proj", "experts.down_proj")):
            n_experts = p.shape[0]
            assert p.numel() % n_experts == 0
            active += p.numel() // n_experts * top_k
        else:
            active += p.numel()
    return total, active


def test_nemotron3_nano_total_and_active_match_the_built_model():
    cfg = json.loads((REF_NANO3 / "config.json").read_text())
    arch = Architecture.from_config(cfg)
    total, active = counted_active(_meta_model(cfg), cfg["num_experts_per_tok"])
    assert total == 31_577_937_344 == arch.total_params
    assert active == arch.total_active_params
    # Published: 3.6B active per token with the embeddings (our 3.58B), about 3.2B without the input embedding.
    assert round(active / 1e9, 1) == 3.6
    assert round((active - arch.params()["embedding"]) / 1e9, 1) == 3.2
    # Per component: only `moe` differs, by the idle experts.
    p, a = arch.params(), arch.active_params()
    assert {k for k in p if p[k] != a[k]} == {"moe", "total"}
    idle = 23 * (128 - 6) * 2 * 2688 * 1856
    assert p["moe"] - a["moe"] == idle


@pytest.mark.parametrize("overrides", [
    {},
    {"num_experts_per_tok": 3, "n_routed_experts": 6},
    {"hybrid_override_pattern": "E*E-M", "moe_latent_size": 24},
    {"n_routed_experts": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2},
])
def test_tiny_active_matches_the_built_model(overrides):
    cfg = tiny_config(**overrides)
    arch = Architecture.from_config(cfg)
    total, active = counted_active(_meta_model(cfg), arch.num_experts_per_tok)
    assert (total, active) == (arch.total_params, arch.total_active_params)
    assert active < total


def test_dense_model_active_equals_total():
    cfg = tiny_config(hybrid_override_pattern="M-*M")
    arch = Architecture.from_config(cfg)
    assert arch.active_params() == arch.params()


@pytest.mark.parametrize(("overrides", "match"), [
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"n_routed_experts": 6, "n_group": 4}, "n_group"),
    ({"n_routed_experts": 4, "n_group": 4, "topk_group": 1}, "fewer than 2"),
])
def test_inconsistent_moe_configs_are_refused(overrides, match):
    from minitron.errors import InputError

    with pytest.raises(InputError, match=match):
        Architecture.from_config(tiny_config(**overrides))


def test_inspect_json_and_table_report_active_parameters():
    r = CliRunner().invoke(app, ["inspect", str(REF_NANO3), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["params"]["total"] == 31_577_937_344
    assert doc["active_params"]["total"] == Architecture.from_path(REF_NANO3).total_active_params
    assert doc["active_params"]["moe"] < doc["params"]["moe"]
    assert (doc["n_routed_experts"], doc["num_experts_per_tok"]) == (128, 6)
    r = CliRunner().invoke(app, ["inspect", str(REF_NANO3)])
    assert r.exit_code == 0
    assert "active per token" in r.stdout and f"{doc['active_params']['total']:,}" in r.stdout


def test_memory_model_keeps_every_expert_resident():
    from minitron.memory import estimate

    arch = Architecture.from_path(REF_NANO3)
    est = estimate(arch, context_length=8192, dtype="bf16")
    assert est.weights_bytes == 2 * 31_577_937_344  # all 128 experts per layer, not the 6 a token uses
    fewer = arch.with_(n_routed_experts=64)
    assert est.weights_bytes - estimate(fewer, context_length=8192).weights_bytes == \
        2 * 23 * 64 * (2 * 2688 * 1856 + 2688)  # bf16 x layers x experts gone x (up + down + router row)
