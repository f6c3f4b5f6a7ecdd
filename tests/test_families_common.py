"""What every family's tiny model passes, parametrised over the families: pruning that keeps everything is
the identity, an FFN cut equals its down-projection columns zeroed, a head cut equals its o_proj columns
zeroed, and a reference config's parameter count is exact. Each family's own file tests what differs."""

from __future__ import annotations

import json

import pytest
import torch
from family_helpers import (
    assert_equals_emulation,
    assert_keep_all_is_identity,
    ffn_down,
    tiny_family,
    zero_dropped_ffn,
    zero_dropped_heads,
)

from minitron.models.architecture import Architecture
from minitron.prune.apply import prune_model
from minitron.prune.select import Shape, make_plan
from minitron.testing import (
    DENSE_TINY,
    HYBRID_TINY,
    tiny_dense_config,
    tiny_falcon_h1_config,
    tiny_hybrid_config,
    tiny_zamba2_config,
)

CONFIGS = {
    **{f: tiny_dense_config(f) for f in sorted(DENSE_TINY)},
    **{f: tiny_hybrid_config(f) for f in sorted(HYBRID_TINY)},
    "falcon_h1": tiny_falcon_h1_config(),
    "zamba2": tiny_zamba2_config(),
}
# Zamba2's shared transformer block serves every hybrid layer: its FFN and heads are refused (test_families_zamba2).
WIDTH_CUT = [f for f in CONFIGS if f != "zamba2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The family's (model dir, loaded model, architecture, random scores), each built once."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = tiny_family(tmp_path_factory, name, CONFIGS[name])
        return built[name]

    return get


@pytest.mark.parametrize("family", list(CONFIGS))
def test_keep_all_is_bit_identical(tiny, family):
    _, model, arch, _ = tiny(family)
    assert_keep_all_is_identity(model, arch)


@pytest.mark.parametrize("family", WIDTH_CUT)
def test_ffn_equals_zeroed_down_proj_columns(tiny, family):
    _, model, arch, unit_scores = tiny(family)
    plan = make_plan(arch, Shape(ffn_size=40), unit_scores)
    edit = zero_dropped_ffn(plan, arch, lambda m, i: ffn_down(m.model.layers[i]))
    assert_equals_emulation(prune_model(model, plan), model, edit, changed_atol=1e-3)  # the cut matters


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=2), Shape(attention_heads=2, kv_heads=2)])
@pytest.mark.parametrize("family", WIDTH_CUT)
def test_heads_equal_zeroed_o_proj_columns(tiny, family, shape):
    _, model, arch, unit_scores = tiny(family)
    plan = make_plan(arch, shape, unit_scores)
    pruned = prune_model(model, plan)
    assert pruned.config.num_key_value_heads == (shape.kv_heads or arch.num_key_value_heads)
    assert_equals_emulation(pruned, model, zero_dropped_heads(plan, arch, lambda m, i: m.model.layers[i].self_attn.o_proj))


@pytest.mark.parametrize(("name", "total", "facts"), [
    ("falcon-h1-0.5b-base", 521_411_104,
     {"mamba_intermediate": 1536, "hidden_size": 1024, "head_dim": 64}),  # d_ssm, not 2 × 1024
    ("zamba2-1.2b", 1_215_064_704, {"attention_layers": 6, "head_dim": 128, "mamba_head_dim": 64}),  # 2 × 2048 / 32
])
def test_reference_config_count_is_exact(name, total, facts):
    from transformers import AutoConfig, AutoModelForCausalLM

    from minitron.assets import CONFIGS as REFERENCE

    cfg = json.loads((REFERENCE / name / "config.json").read_text())
    arch = Architecture.from_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert arch.total_params == sum(p.numel() for p in model.parameters()) == total
    got = {k: getattr(arch, k) for k in facts}
    assert {k: len(v()) if callable(v) else v for k, v in got.items()} == facts  # a method: how many layers
