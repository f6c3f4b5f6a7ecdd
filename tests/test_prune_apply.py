"""Pruned models equal the original restricted to the kept units (per axis), in memory and streamed."""

from __future__ import annotations

import pytest
import torch
from family_helpers import (
    assert_equals_emulation,
    assert_equals_reference,
    assert_keep_all_is_identity,
    logits,
    random_scores,
    zero_dropped_ffn,
    zero_dropped_heads,
)
from prune_helpers import load_streamed

from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.prune.apply import prune_model
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import blocks_skipped


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def arch(tiny_model_dir):
    return Architecture.from_path(tiny_model_dir)


@pytest.fixture(scope="module")
def scores(arch):
    return random_scores(arch)


def test_keep_all_is_bit_identical(model, arch):
    assert_keep_all_is_identity(model, arch)


def test_ffn_equals_zeroed_down_proj_columns(model, arch, scores):
    plan = make_plan(arch, Shape(ffn_size=40), scores)
    edit = zero_dropped_ffn(plan, arch, lambda m, i: m.model.layers[i].mixer.down_proj)
    assert_equals_emulation(prune_model(model, plan), model, edit, changed_atol=1e-3)  # the cut matters


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=1), Shape(attention_heads=2, kv_heads=1)])
def test_attention_heads_equal_zeroed_o_proj_columns(model, arch, scores, shape):
    plan = make_plan(arch, shape, scores)
    edit = zero_dropped_heads(plan, arch, lambda m, i: m.model.layers[i].mixer.o_proj)
    assert_equals_emulation(prune_model(model, plan), model, edit)


@pytest.mark.parametrize("dropped", [[1], [3], [4], [0, 4, 7]])
def test_dropped_layers_equal_skipped_blocks(model, arch, scores, dropped):
    pruned = prune_model(model, make_plan(arch, Shape(), scores, dropped))
    with blocks_skipped(model, dropped):
        want = logits(model)
    assert_equals_emulation(pruned, model, want=want)


@pytest.mark.parametrize("shape", [
    Shape(hidden_size=40),
    Shape(mamba_heads=4),
    Shape(mamba_head_dim=8),
    Shape(hidden_size=48, ffn_size=64, mamba_heads=6, mamba_head_dim=10, attention_heads=2, kv_heads=1),
    Shape(experts=3, moe_ffn_size=24, shared_expert_ffn_size=40),  # MoE: routed experts, their width, shared expert
    Shape(hidden_size=48, ffn_size=64, experts=2, moe_ffn_size=16, shared_expert_ffn_size=32, experts_per_token=1),
])
def test_hidden_and_mamba_cuts_equal_plain_reference(model, arch, scores, shape):
    assert_equals_reference(model, make_plan(arch, shape, scores, [1] if shape.ffn_size else []))


def test_mamba_heads_stay_in_their_groups(arch, scores):
    plan = make_plan(arch, Shape(mamba_heads=4), scores)
    per = arch.mamba_num_heads // arch.n_groups
    for heads in plan.mamba_heads.values():
        assert [h // per for h in heads] == [0, 0, 1, 1]


def test_streaming_equals_in_memory_and_loads(model, arch, scores, tiny_model_dir, tmp_path):
    plan = make_plan(arch, Shape(hidden_size=48, ffn_size=64, mamba_heads=6, attention_heads=4), scores, [1, 4])
    ckpt = open_checkpoint(tiny_model_dir)
    info = prune_checkpoint(ckpt, plan, tmp_path, max_shard_bytes=60_000)
    assert len(info["files"]) > 1  # sharded
    load_streamed(tmp_path, model, plan)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn])
def test_fast_tensor_cut_equals_reference(dtype):
    from minitron.prune.apply import prune_tensor, prune_tensor_fast

    g = torch.Generator().manual_seed(0)
    t = torch.randn(12, 10, 3, generator=g).to(dtype)
    for idx in [(None, None, None), ([0, 3, 11], None, None), (None, [1, 2, 9], [2]), ([5], [0, 9], None)]:
        a, b = prune_tensor(t, idx), prune_tensor_fast(t, idx)
        assert a.dtype == b.dtype == dtype and a.shape == b.shape and b.is_contiguous()
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
