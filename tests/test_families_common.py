"""What every family's tiny model passes, parametrised over the families: pruning that keeps everything is
the identity, an FFN cut equals its down-projection columns zeroed, a head cut equals its o_proj columns
zeroed, dropped blocks equal blocks that write nothing into the residual stream, and a reference config's
parameter count is exact. Each family's own file tests what differs."""

from __future__ import annotations

import json

import family_helpers as fam
import pytest
import torch

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
# Zamba2's shared transformer block serves every hybrid layer: its FFN and heads are refused, and its
# hybrid layers are never dropped (test_families_zamba2.py).
WIDTH_CUT = [f for f in CONFIGS if f != "zamba2"]
DROPS = {**{f: [[0], [2], [1, 3]] for f in DENSE_TINY}, **{f: [[1], [0, 3]] for f in HYBRID_TINY},
         "falcon_h1": [[1], [0, 2]]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The family's (model dir, loaded model, architecture, random scores), each built once."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = fam.tiny_family(tmp_path_factory, name, CONFIGS[name])
        return built[name]

    return get


@pytest.mark.parametrize("family", list(CONFIGS))
def test_keep_all_is_bit_identical(tiny, family):
    _, model, arch, _ = tiny(family)
    fam.assert_keep_all_is_identity(model, arch)


@pytest.mark.parametrize("family", WIDTH_CUT)
def test_ffn_equals_zeroed_down_proj_columns(tiny, family):
    _, model, arch, unit_scores = tiny(family)
    plan = make_plan(arch, Shape(ffn_size=40), unit_scores)
    edit = fam.zero_dropped_ffn(plan, arch, lambda m, i: fam.ffn_down(m.model.layers[i]))
    fam.assert_equals_emulation(prune_model(model, plan), model, edit, changed_atol=1e-3)  # the cut matters


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=2), Shape(attention_heads=2, kv_heads=2)])
@pytest.mark.parametrize("family", WIDTH_CUT)
def test_heads_equal_zeroed_o_proj_columns(tiny, family, shape):
    _, model, arch, unit_scores = tiny(family)
    plan = make_plan(arch, shape, unit_scores)
    pruned = prune_model(model, plan)
    assert pruned.config.num_key_value_heads == (shape.kv_heads or arch.num_key_value_heads)
    fam.assert_equals_emulation(pruned, model, fam.zero_dropped_heads(plan, arch, lambda m, i: m.model.layers[i].self_attn.o_proj))


@pytest.mark.parametrize(("family", "dropped"), [(f, d) for f in WIDTH_CUT for d in DROPS[f]])
def test_dropped_layers_equal_zeroed_residual_writes(tiny, family, dropped):
    _, model, arch, unit_scores = tiny(family)
    pruned = prune_model(model, make_plan(arch, Shape(), unit_scores, dropped))
    assert pruned.config.num_hidden_layers == arch.num_layers - len(dropped)
    assert Architecture.from_config(pruned.config.to_dict()).pattern == "".join(
        c for i, c in enumerate(arch.pattern) if i not in dropped)
    fam.assert_equals_emulation(pruned, model, fam.zero_residual_writes(dropped))


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
