"""Dense families (llama, mistral, qwen2, qwen3) on tiny random models: accounting, hidden cuts,
streaming == in memory, stock loading, the memory model against transformers' cache, scoring; the scoring
engine's block-by-block pass of every family. (Keep-all, FFN, head and depth cuts: `test_families_common.py`.)"""

from __future__ import annotations

import copy

import family_helpers as fam
import pytest
import torch
from prune_helpers import load_streamed

from minitron.models.architecture import Architecture
from minitron.models.checkpoint import open_checkpoint
from minitron.prune.apply import prune_model
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import (
    DENSE_TINY,
    HYBRID_TINY,
    build_model,
    tiny_dense_config,
    tiny_falcon_h1_config,
    tiny_hybrid_config,
    tiny_zamba2_config,
)

FAMILIES = sorted(DENSE_TINY)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """(model dir, loaded model, architecture, random scores) of one family."""
    return fam.tiny_family(tmp_path_factory, request.param, tiny_dense_config(request.param))


def test_accounting_and_specs_match_the_module(tiny):
    path, model, arch, _ = tiny
    assert arch.family == model.config.model_type
    fam.assert_specs_match(model, arch, path)  # a tied head counted once


def test_family_details_are_read(tiny):
    _, _, a, _ = tiny
    expect = {"llama": (True, True, False), "mistral": (False, False, False), "qwen2": (True, False, False),
              "qwen3": (False, False, True)}[a.family]
    assert (a.qkv_bias, a.o_bias, a.qk_norm) == expect
    assert a.head_dim == 12 != a.hidden_size // a.num_attention_heads


@pytest.mark.parametrize("shape", [Shape(hidden_size=40), Shape(hidden_size=48, ffn_size=64, attention_heads=4,
                                                                 kv_heads=2)])
def test_hidden_cut_equals_plain_reference(tiny, shape):
    """Every RMSNorm reads all hidden channels, so the reference is the plain module-by-module copy."""
    _, model, arch, unit_scores = tiny
    fam.assert_equals_reference(model, make_plan(arch, shape, unit_scores, [1] if shape.ffn_size else []))


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    path, model, arch, unit_scores = tiny
    plan = make_plan(arch, Shape(hidden_size=48, ffn_size=64, attention_heads=4, kv_heads=2), unit_scores, [2])
    info = prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)
    assert len(info["files"]) > 1
    cfg = plan.target().to_config()
    assert cfg["head_dim"] == 12 and cfg["hidden_size"] == 48 and cfg["num_hidden_layers"] == 3
    fam.assert_generates(load_streamed(tmp_path, model, plan))


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_estimate_equals_transformers_cache(tiny, dtype, torch_dtype):
    _, model, arch, _ = tiny
    m = copy.deepcopy(model).to(torch_dtype)
    kv, _, est = fam.cache_and_estimate(m, arch, dtype=dtype)
    assert est.kv_cache_bytes == kv and est.mamba_state_bytes == 0
    assert est.weights_bytes == sum(p.numel() * p.element_size() for p in m.parameters())


def test_scores_see_zeroed_units_and_streaming_equals_in_memory(tiny):
    path, model, arch, _ = tiny
    mem = fam.scores_streamed_equal_in_memory(path, model, arch)
    assert mem["ffn"].shape == (arch.num_layers, arch.intermediate_size)
    assert mem["attention_heads"].shape == (arch.num_layers, arch.num_attention_heads)

    def edit(m):
        m.model.layers[1].mlp.up_proj.weight[17] = 0
        if m.model.layers[1].mlp.up_proj.bias is not None:
            m.model.layers[1].mlp.up_proj.bias[17] = 0
        m.model.layers[2].self_attn.v_proj.weight.zero_()  # v = 0: every head's output (o_proj's input) is 0
        if m.model.layers[2].self_attn.v_proj.bias is not None:
            m.model.layers[2].self_attn.v_proj.bias.zero_()

    z = fam.scores(fam.zeroed(model, edit), arch)
    assert z["ffn"][1, 17] == 0 and (z["ffn"][1] > 0).sum() == arch.intermediate_size - 1
    assert (z["attention_heads"][2] == 0).all() and (z["attention_heads"][1] > 0).all()


@pytest.mark.parametrize("cfg", [
    *(tiny_dense_config(f) for f in FAMILIES),
    tiny_dense_config("mistral", sliding_window=8),  # windowed masks
    tiny_dense_config("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=2),
    *(tiny_hybrid_config(f) for f in sorted(HYBRID_TINY)),  # Granite: µP embedding and logit scales
    tiny_falcon_h1_config(),  # µP embedding and lm_head multipliers
    tiny_zamba2_config(),  # each block is called with the embeddings the shared block concatenates to its input
], ids=lambda c: c["model_type"] + ("-window" if c.get("sliding_window") else ""))
def test_the_engines_block_by_block_pass_equals_the_model(cfg):
    """What scoring runs (embedding, each block called on its own by the family, head) is the model's forward."""
    model = build_model(cfg)
    assert torch.equal(fam.engine_logits(model, fam.IDS), fam.logits(model))


@pytest.mark.parametrize("cfg", [
    tiny_dense_config("mistral", sliding_window=8),
    tiny_dense_config("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=2),
    tiny_dense_config("qwen2", use_sliding_window=True, sliding_window=6, max_window_layers=1),
], ids=lambda c: c["model_type"])
@pytest.mark.parametrize("ctx", [5, 17])
def test_sliding_window_cache_bytes_and_depth(cfg, ctx):
    """Windowed layers hold min(context, window - 1) tokens in transformers' cache; depth keeps each layer's type."""
    arch = Architecture.from_config(cfg)
    model = build_model(cfg)
    kv, _, est = fam.cache_and_estimate(model, arch, batch=2, ctx=ctx, dtype="fp32")
    assert est.kv_cache_bytes == kv
    plan = make_plan(arch, Shape(), None, [1])
    pruned = prune_model(model, plan)
    if arch.layer_types is not None:
        assert pruned.config.layer_types == [arch.layer_types[i] for i in (0, 2, 3)]
    assert Architecture.from_config(pruned.config.to_dict()).layer_types == plan.target().layer_types
