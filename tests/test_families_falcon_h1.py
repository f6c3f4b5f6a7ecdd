"""Falcon-H1 on a tiny random model: attention and Mamba-2 side by side in every layer, `mamba_d_ssm`
(a Mamba width that is not expand × hidden), the optional gated norm, µP multipliers. Accounting,
every axis's cut, streaming == in memory, stock loading, the memory model against transformers'
cache, scoring, and the reference config's exact count."""

from __future__ import annotations

import json

import pytest
import torch
from family_helpers import (
    IDS,
    cache_bytes,
    engine_logits,
    logits,
    random_scores,
    scores,
    scores_streamed_equal_in_memory,
    zeroed,
)

from minitron.memory import estimate
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.models.tensors import canonical_name, model_specs
from minitron.prune.apply import prune_model
from minitron.prune.plan import PrunePlan
from minitron.prune.reference import reference_prune
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import build_model, make_tiny_model_dir, tiny_falcon_h1_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("falcon_h1") / "model", tiny_falcon_h1_config())
    arch = Architecture.from_path(path)
    return path, load_model(path), arch, random_scores(arch)


def test_reference_config_count_is_exact():
    from transformers import AutoConfig, AutoModelForCausalLM

    from minitron.assets import CONFIGS

    cfg = json.loads((CONFIGS / "falcon-h1-0.5b-base" / "config.json").read_text())
    arch = Architecture.from_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert arch.total_params == sum(p.numel() for p in model.parameters()) == 521_411_104
    assert (arch.mamba_intermediate, arch.hidden_size, arch.head_dim) == (1536, 1024, 64)  # d_ssm, not 2 × 1024


def test_accounting_and_specs_match_the_module(tiny):
    path, model, arch, _ = tiny
    assert arch.pattern == "***" and arch.attention_layers() == arch.mamba_layers() == arch.ffn_layers() == [0, 1, 2]
    assert arch.mamba_intermediate == 96 != 2 * arch.hidden_size
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    got = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == {k: s.shape for k, s in model_specs(arch, layout="module").items()}
    assert {canonical_name(k) for k in open_checkpoint(path).tensors} == set(model_specs(arch))
    # The module code's segment order: in_proj = [z | x | B | C | dt], split([d_ssm, conv_dim, heads]).
    mixer = model.model.layers[0].mamba
    assert (mixer.intermediate_size, mixer.conv_dim, mixer.num_heads) == (96, 96 + 2 * 2 * 16, 8)
    assert mixer.in_proj.out_features == 96 + mixer.conv_dim + 8 and mixer.norm.n_groups == 2


def test_keep_all_is_bit_identical(tiny):
    _, model, arch, _ = tiny
    assert torch.equal(logits(model), logits(prune_model(model, PrunePlan.keep_all(arch))))


def test_ffn_equals_zeroed_down_columns(tiny):
    _, model, arch, unit_scores = tiny
    plan = make_plan(arch, Shape(ffn_size=40), unit_scores)

    def edit(m):
        for i, kept in plan.ffn.items():
            m.model.layers[i].feed_forward.down_proj.weight[:, sorted(set(range(96)) - set(kept))] = 0

    pruned = prune_model(model, plan)
    torch.testing.assert_close(logits(pruned), logits(zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-3)


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=2)])
def test_heads_equal_zeroed_o_proj_columns(tiny, shape):
    _, model, arch, unit_scores = tiny
    plan = make_plan(arch, shape, unit_scores)
    d = arch.head_dim

    def edit(m):
        for i, kept in plan.q_heads.items():
            for h in set(range(arch.num_attention_heads)) - set(kept):
                m.model.layers[i].self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0

    torch.testing.assert_close(logits(prune_model(model, plan)), logits(zeroed(model, edit)), rtol=1e-5, atol=1e-5)


def test_mamba_heads_without_the_gated_norm_equal_zeroed_out_proj_columns():
    """The released models have no gated norm (`mamba_rms_norm` false): each head's output is its own, so a
    cut head equals its out_proj columns zeroed."""
    cfg = tiny_falcon_h1_config(mamba_rms_norm=False)
    model, arch = build_model(cfg), Architecture.from_config(cfg)
    assert "layers.0.mamba.norm.weight" not in model_specs(arch)
    plan = make_plan(arch, Shape(mamba_heads=4), random_scores(arch, 3))
    p = arch.mamba_head_dim

    def edit(m):
        for i, kept in plan.mamba_heads.items():
            for h in set(range(arch.mamba_num_heads)) - set(kept):
                m.model.layers[i].mamba.out_proj.weight[:, h * p:(h + 1) * p] = 0

    pruned = prune_model(model, plan)
    assert pruned.config.mamba_d_ssm == 48 and sum(x.numel() for x in pruned.parameters()) == plan.target().total_params
    torch.testing.assert_close(logits(pruned), logits(zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropped", [[1], [0, 2]])
def test_dropped_layers_equal_zeroed_residual_writes(tiny, dropped):
    _, model, arch, unit_scores = tiny
    plan = make_plan(arch, Shape(), unit_scores, dropped)

    def edit(m):
        for i in dropped:
            layer = m.model.layers[i]
            for lin in (layer.mamba.out_proj, layer.self_attn.o_proj, layer.feed_forward.down_proj):
                lin.weight.zero_()

    pruned = prune_model(model, plan)
    assert pruned.config.num_hidden_layers == 3 - len(dropped)
    torch.testing.assert_close(logits(pruned), logits(zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [
    Shape(hidden_size=32),  # the Mamba width (96) stays: it does not follow the hidden size
    Shape(mamba_heads=4),
    Shape(mamba_head_dim=8, hidden_size=48),
    Shape(hidden_size=40, ffn_size=64, mamba_heads=6, mamba_head_dim=8, attention_heads=4, kv_heads=2),
])
def test_hidden_and_mamba_cuts_equal_plain_reference(tiny, shape):
    """The gated norm and every RMSNorm read all their channels: the reference is the module-by-module copy."""
    _, model, arch, unit_scores = tiny
    plan = make_plan(arch, shape, unit_scores, [2] if shape.ffn_size else [])
    pruned, ref = prune_model(model, plan), reference_prune(model, plan)
    a, b = pruned.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for x, y in zip(pruned.buffers(), ref.buffers(), strict=True):  # mup_vector, rotary tables
        assert torch.equal(x, y)
    assert torch.equal(logits(pruned), logits(ref))
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    path, model, arch, unit_scores = tiny
    plan = make_plan(arch, Shape(hidden_size=32, ffn_size=64, mamba_heads=4, attention_heads=4), unit_scores, [1])
    assert len(prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)["files"]) > 1
    cfg = plan.target().to_config()
    assert (cfg["mamba_d_ssm"], cfg["mamba_n_heads"], cfg["head_dim"], cfg["num_hidden_layers"]) == (48, 4, 12, 2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    open_checkpoint(tmp_path).check()
    loaded, li = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    assert not li["missing_keys"] and not li["unexpected_keys"] and not li.get("mismatched_keys")
    in_mem = prune_model(model, plan)
    got, want = loaded.state_dict(), in_mem.state_dict()
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
    assert sum(p.numel() for p in loaded.parameters()) == plan.target().total_params
    assert torch.equal(logits(loaded.eval()), logits(in_mem))  # mup_vector rebuilt from the pruned config
    assert loaded.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False).shape == (1, 9)


def test_estimate_equals_transformers_cache(tiny):
    """Each layer holds a KV cache and a Mamba state (transformers' `LinearAttentionAndFullAttentionLayer`)."""
    _, model, arch, _ = tiny
    batch, ctx = 3, 17
    with torch.no_grad():
        out = model(torch.randint(3, 300, (batch, ctx)), use_cache=True)
    kv, state = cache_bytes(out.past_key_values)
    est = estimate(arch, context_length=ctx, batch_size=batch, dtype="fp32", engine="hf")  # transformers keeps conv_kernel columns
    assert (est.kv_cache_bytes, est.mamba_state_bytes) == (kv, state) and kv > 0 and state > 0


def test_the_engines_block_by_block_pass_equals_the_model(tiny):
    _, model, _, _ = tiny
    assert torch.equal(engine_logits(model), logits(model))


def test_scores_streaming_equals_in_memory_and_see_zeroed_units(tiny):
    path, model, arch, _ = tiny
    mem = scores_streamed_equal_in_memory(path, model, arch)
    assert mem["mamba_heads"].shape == (3, 8) and mem["attention_heads"].shape == (3, 8) and mem["ffn"].shape == (3, 96)

    def edit(m):  # Mamba head 5 of layer 1 (its x-slice rows of in_proj); FFN neuron 7 of layer 2
        p, inner = arch.mamba_head_dim, arch.mamba_intermediate
        m.model.layers[1].mamba.in_proj.weight[inner + 5 * p:inner + 6 * p] = 0
        m.model.layers[2].feed_forward.up_proj.weight[7] = 0

    z = scores(zeroed(model, edit), arch)
    assert z["mamba_heads"][1, 5] == 0 and (z["mamba_heads"][1] > 0).sum() == 7
    assert z["ffn"][2, 7] == 0 and (z["ffn"][2] > 0).sum() == 95
