"""Dense families (llama, mistral, qwen2, qwen3) on tiny random models: accounting, every axis's cut,
streaming == in memory, stock loading, the memory model against transformers' cache, scoring."""

from __future__ import annotations

import copy

import pytest
import torch
from prune_helpers import load_streamed

from minitron.importance.scores import Scores, expected_shapes
from minitron.memory import estimate
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.models.tensors import canonical_name, model_specs
from minitron.prune.apply import prune_model
from minitron.prune.plan import PrunePlan
from minitron.prune.reference import reference_prune
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import (
    DENSE_TINY,
    HYBRID_TINY,
    make_tiny_model_dir,
    tiny_dense_config,
    tiny_hybrid_config,
)

FAMILIES = sorted(DENSE_TINY)
IDS = torch.randint(3, 384, (2, 20), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """(model dir, loaded model, architecture, random scores) of one family."""
    path = make_tiny_model_dir(tmp_path_factory.mktemp(request.param) / "model", tiny_dense_config(request.param))
    arch = Architecture.from_path(path)
    g = torch.Generator().manual_seed(1)
    scores = Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})
    return path, load_model(path), arch, scores


def _zeroed(model, edit):
    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def test_accounting_and_specs_match_the_module(tiny):
    path, model, arch, _ = tiny
    assert arch.family == model.config.model_type
    assert arch.total_params == sum(p.numel() for p in model.parameters())  # a tied head counted once
    specs = model_specs(arch, layout="module")
    got = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if arch.tie_word_embeddings:
        got.pop("lm_head.weight")
    assert got == {k: s.shape for k, s in specs.items()}
    stored = {canonical_name(k) for k in open_checkpoint(path).tensors}
    assert stored == set(model_specs(arch))


def test_family_details_are_read(tiny):
    _, _, a, _ = tiny
    expect = {"llama": (True, True, False), "mistral": (False, False, False), "qwen2": (True, False, False),
              "qwen3": (False, False, True)}[a.family]
    assert (a.qkv_bias, a.o_bias, a.qk_norm) == expect
    assert a.head_dim == 12 != a.hidden_size // a.num_attention_heads


def test_keep_all_is_bit_identical(tiny):
    _, model, arch, _ = tiny
    assert torch.equal(logits(model), logits(prune_model(model, PrunePlan.keep_all(arch))))


def test_ffn_equals_zeroed_down_proj_columns(tiny):
    _, model, arch, scores = tiny
    plan = make_plan(arch, Shape(ffn_size=40), scores)

    def edit(m):
        for i, kept in plan.ffn.items():
            gone = sorted(set(range(arch.intermediate_size)) - set(kept))
            m.model.layers[i].mlp.down_proj.weight[:, gone] = 0

    pruned = prune_model(model, plan)
    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-3)  # the cut matters


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=2), Shape(attention_heads=2, kv_heads=2)])
def test_heads_equal_zeroed_o_proj_columns(tiny, shape):
    _, model, arch, scores = tiny
    plan = make_plan(arch, shape, scores)
    d = arch.head_dim

    def edit(m):
        for i, kept in plan.q_heads.items():
            for h in set(range(arch.num_attention_heads)) - set(kept):
                m.model.layers[i].self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0

    pruned = prune_model(model, plan)
    assert pruned.config.num_key_value_heads == (shape.kv_heads or arch.num_key_value_heads)
    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropped", [[0], [2], [1, 3]])
def test_dropped_layers_equal_zeroed_residual_writes(tiny, dropped):
    _, model, arch, scores = tiny
    plan = make_plan(arch, Shape(), scores, dropped)

    def edit(m):  # a block whose o_proj and down_proj write nothing is the identity
        for i in dropped:
            layer = m.model.layers[i]
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.zero_()
                if lin.bias is not None:
                    lin.bias.zero_()

    pruned = prune_model(model, plan)
    assert pruned.config.num_hidden_layers == arch.num_layers - len(dropped)
    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [Shape(hidden_size=40), Shape(hidden_size=48, ffn_size=64, attention_heads=4,
                                                                 kv_heads=2)])
def test_hidden_cut_equals_plain_reference(tiny, shape):
    """Every RMSNorm reads all hidden channels, so the reference is the plain module-by-module copy."""
    _, model, arch, scores = tiny
    plan = make_plan(arch, shape, scores, [1] if shape.ffn_size else [])
    pruned, ref = prune_model(model, plan), reference_prune(model, plan)
    a, b = pruned.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(logits(pruned), logits(ref))
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    path, model, arch, scores = tiny
    plan = make_plan(arch, Shape(hidden_size=48, ffn_size=64, attention_heads=4, kv_heads=2), scores, [2])
    info = prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)
    assert len(info["files"]) > 1
    cfg = plan.target().to_config()
    assert cfg["head_dim"] == 12 and cfg["hidden_size"] == 48 and cfg["num_hidden_layers"] == 3
    loaded = load_streamed(tmp_path, model, plan)
    gen = loaded.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 9)


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_estimate_equals_transformers_cache(tiny, dtype, torch_dtype):
    _, model, arch, _ = tiny
    m = copy.deepcopy(model).to(torch_dtype)
    batch, ctx = 3, 17
    with torch.no_grad():
        out = m(torch.randint(3, 300, (batch, ctx)), use_cache=True)
    kv = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers
             for t in (layer.keys, layer.values))
    est = estimate(arch, context_length=ctx, batch_size=batch, dtype=dtype)
    assert est.kv_cache_bytes == kv and est.mamba_state_bytes == 0
    assert est.weights_bytes == sum(p.numel() * p.element_size() for p in m.parameters())


def test_scores_see_zeroed_units_and_streaming_equals_in_memory(tiny):
    from minitron.importance.aggregate import Aggregation
    from minitron.importance.engine import InMemorySource
    from minitron.recipes.score import score_tensors
    from minitron.models.block_stream import StreamingSource

    path, model, arch, _ = tiny
    toks = torch.randint(3, 384, (4, 16), generator=torch.Generator().manual_seed(2))
    kw = {"agg": Aggregation(), "batch_size": 2, "layer_metric": "kl"}
    mem, _, _ = score_tensors(InMemorySource(model), arch, toks, **kw)
    streamed, _, _ = score_tensors(StreamingSource(path), arch, toks, **kw)
    for k in mem:
        torch.testing.assert_close(mem[k], streamed[k], rtol=1e-5, atol=1e-6)
    assert mem["ffn"].shape == (arch.num_layers, arch.intermediate_size)
    assert mem["attention_heads"].shape == (arch.num_layers, arch.num_attention_heads)

    def edit(m):
        m.model.layers[1].mlp.up_proj.weight[17] = 0
        if m.model.layers[1].mlp.up_proj.bias is not None:
            m.model.layers[1].mlp.up_proj.bias[17] = 0
        m.model.layers[2].self_attn.v_proj.weight.zero_()  # v = 0: every head's output (o_proj's input) is 0
        if m.model.layers[2].self_attn.v_proj.bias is not None:
            m.model.layers[2].self_attn.v_proj.bias.zero_()

    zeroed, _, _ = score_tensors(InMemorySource(_zeroed(model, edit)), arch, toks, **kw)
    assert zeroed["ffn"][1, 17] == 0 and (zeroed["ffn"][1] > 0).sum() == arch.intermediate_size - 1
    assert (zeroed["attention_heads"][2] == 0).all() and (zeroed["attention_heads"][1] > 0).all()


@pytest.mark.parametrize("cfg", [
    *(tiny_dense_config(f) for f in FAMILIES),
    tiny_dense_config("mistral", sliding_window=8),  # windowed masks
    tiny_dense_config("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=2),
    *(tiny_hybrid_config(f) for f in sorted(HYBRID_TINY)),  # Granite: µP embedding and logit scales
], ids=lambda c: c["model_type"] + ("-window" if c.get("sliding_window") else ""))
def test_the_engines_block_by_block_pass_equals_the_model(cfg):
    """What scoring runs (embedding, each block called on its own by the family, head) is the model's forward."""
    from family_helpers import engine_logits

    from minitron.testing import build_model

    model = build_model(cfg)
    assert torch.equal(engine_logits(model, IDS), logits(model))


@pytest.mark.parametrize("cfg", [
    tiny_dense_config("mistral", sliding_window=8),
    tiny_dense_config("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=2),
    tiny_dense_config("qwen2", use_sliding_window=True, sliding_window=6, max_window_layers=1),
], ids=lambda c: c["model_type"])
@pytest.mark.parametrize("ctx", [5, 17])
def test_sliding_window_cache_bytes_and_depth(cfg, ctx):
    """Windowed layers hold min(context, window - 1) tokens in transformers' cache; depth keeps each layer's type."""
    from minitron.testing import build_model

    arch = Architecture.from_config(cfg)
    model = build_model(cfg)
    with torch.no_grad():
        out = model(torch.randint(3, 300, (2, ctx)), use_cache=True)
    kv = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers for t in (layer.keys, layer.values))
    assert estimate(arch, context_length=ctx, batch_size=2, dtype="fp32").kv_cache_bytes == kv
    plan = make_plan(arch, Shape(), None, [1])
    pruned = prune_model(model, plan)
    if arch.layer_types is not None:
        assert pruned.config.layer_types == [arch.layer_types[i] for i in (0, 2, 3)]
    assert Architecture.from_config(pruned.config.to_dict()).layer_types == plan.target().layer_types
