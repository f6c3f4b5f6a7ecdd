"""Architecture layer: patterns, exact parameter accounting, tensor specs vs transformers' own model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REF_9B, REF_12B

from minitron.errors import InputError
from minitron.models import Architecture
from minitron.models.layer_types import layer_char, pattern_from_config, set_pattern
from minitron.models.tensors import FFN, HIDDEN, MAMBA_HEADS, MAMBA_INNER, canonical_name, model_specs
from minitron.testing import build_model, tiny_config


def _meta_model(cfg: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))


@pytest.mark.parametrize(
    ("ref", "params", "pattern_counts"),
    [(REF_12B, 12_310_001_152, (28, 28, 6)), (REF_9B, 8_888_227_328, (27, 25, 4))],
)
def test_reference_parameter_counts(ref, params, pattern_counts):
    arch = Architecture.from_path(ref)
    assert arch.total_params == params
    assert (arch.count("M"), arch.count("-"), arch.count("*")) == pattern_counts
    assert sum(v for k, v in arch.params().items() if k != "total") == params


@pytest.mark.parametrize("ref", [REF_12B, REF_9B])
def test_reference_accounting_equals_built_model(ref):
    cfg = json.loads((ref / "config.json").read_text())
    model = _meta_model(cfg)
    arch = Architecture.from_config(cfg)
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    got = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: s.shape for k, s in model_specs(arch, layout="module").items()}
    assert got == want


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_word_embeddings": True},
        {"mlp_bias": True, "use_bias": True, "use_conv_bias": False},
        {"hybrid_override_pattern": "E*E-M", "moe_latent_size": 24},
    ],
)
def test_component_accounting_matches_modules(overrides):
    cfg = tiny_config(**overrides)
    model = _meta_model(cfg)
    arch = Architecture.from_config(cfg)
    counted = {"embedding": 0, "lm_head": 0, "mamba": 0, "attention": 0, "mlp": 0, "moe": 0, "norm": 0}
    kinds = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        n = canonical_name(name)
        if n.startswith("embeddings."):
            counted["embedding"] += p.numel()
        elif n.startswith("lm_head."):
            counted["lm_head"] += p.numel()
        elif n == "norm_f.weight" or (n.startswith("layers.") and n.split(".")[2] == "norm"):
            counted["norm"] += p.numel()
        else:
            counted[kinds[arch.pattern[int(n.split(".")[1])]]] += p.numel()
    params = arch.params()
    assert {k: params[k] for k in counted} == counted
    assert params["total"] == sum(counted.values())


def test_checkpoint_specs_name_moe_experts_per_expert(tiny_model_dir):
    from minitron.models.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny_model_dir)
    stored = {canonical_name(k) for k in ckpt.tensors}
    assert stored == set(model_specs(ckpt.arch))
    assert "layers.4.mixer.experts.0.up_proj.weight" in stored


def test_segments_follow_the_fused_mamba_layout():
    arch = Architecture.from_config(tiny_config())
    specs = model_specs(arch)
    in_proj = specs["layers.0.mixer.in_proj.weight"]
    i, gn = arch.mamba_intermediate, arch.n_groups * arch.ssm_state_size
    assert in_proj.dims[0] == ((MAMBA_INNER, i), (MAMBA_INNER, i), ("fixed", gn), ("fixed", gn), (MAMBA_HEADS, 8))
    assert in_proj.dims[1] == ((HIDDEN, 64),)
    assert specs["layers.0.mixer.conv1d.weight"].shape == (arch.mamba_conv_dim, 1, 4)
    assert specs["layers.1.mixer.down_proj.weight"].dims == (((HIDDEN, 64),), ((FFN, 96),))
    assert specs["embeddings.weight"].axes() == {HIDDEN}


def test_layer_type_spellings_and_legacy_pattern():
    assert [layer_char(n) for n in ("mamba", "linear_attention", "mlp", "attention", "full_attention", "moe")] == list(
        "MM-**E"
    )
    assert pattern_from_config({"hybrid_override_pattern": "M-*E"}) == "M-*E"
    assert pattern_from_config({"layers_block_type": ["mamba", "mlp", "attention"]}) == "M-*"
    assert pattern_from_config({"layers_block_type": ["linear_attention", "moe"]}) == "ME"
    with pytest.raises(InputError, match="disagree"):
        pattern_from_config({"hybrid_override_pattern": "M-", "layers_block_type": ["mlp", "mlp"]})
    with pytest.raises(InputError, match="unknown"):
        pattern_from_config({"hybrid_override_pattern": "MX"})
    # Rewriting keeps the spelling the config used.
    assert set_pattern({"layers_block_type": ["mamba", "mlp"]}, "M")["layers_block_type"] == ["mamba"]
    out = set_pattern({"hybrid_override_pattern": "M-", "num_hidden_layers": 2}, "M")
    assert out["hybrid_override_pattern"] == "M" and out["num_hidden_layers"] == 1


def test_with_and_to_config_roundtrip_loads_in_transformers():
    arch = Architecture.from_config(tiny_config())
    small = arch.with_(hidden_size=48, intermediate_size=64, mamba_num_heads=4, pattern="M-*M")
    model = build_model(small.to_config())
    assert sum(p.numel() for p in model.parameters()) == small.total_params
    with pytest.raises(InputError, match="n_groups"):
        arch.with_(mamba_num_heads=5)
    with pytest.raises(InputError, match="num_key_value_heads"):
        arch.with_(num_attention_heads=7)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"model_type": "gpt2", "hidden_size": 8}, "unsupported model_type .gpt2.: minitron supports nemotron_h, llama"),
        ({"model_type": "nemotron_h", "hidden_size": 8, "vocab_size": 10}, "no layer pattern"),
        (["not", "a", "dict"], "JSON object"),
    ],
)
def test_bad_configs(cfg, match):
    with pytest.raises(InputError, match=match):
        Architecture.from_config(cfg)
