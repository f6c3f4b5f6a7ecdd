"""Pruned models equal the original restricted to the kept units (per axis), in memory and streamed."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import load_streamed

from minitron.importance.scores import Scores, expected_shapes
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.prune.apply import prune_model
from minitron.prune.plan import PrunePlan
from minitron.prune.reference import reference_prune
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint

IDS = torch.randint(3, 384, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def arch(tiny_model_dir):
    return Architecture.from_path(tiny_model_dir)


@pytest.fixture(scope="module")
def scores(arch):
    g = torch.Generator().manual_seed(1)
    return Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})


def test_keep_all_is_bit_identical(model, arch):
    pruned = prune_model(model, PrunePlan.keep_all(arch))
    assert torch.equal(logits(model), logits(pruned))


def _zeroed(model, edit):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def test_ffn_equals_zeroed_down_proj_columns(model, arch, scores):
    plan = make_plan(arch, Shape(ffn_size=40), scores)
    pruned = prune_model(model, plan)

    def edit(m):
        for i, kept in plan.ffn.items():
            gone = sorted(set(range(arch.intermediate_size)) - set(kept))
            m.model.layers[i].mixer.down_proj.weight[:, gone] = 0

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-3)  # the cut matters


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=1), Shape(attention_heads=2, kv_heads=1)])
def test_attention_heads_equal_zeroed_o_proj_columns(model, arch, scores, shape):
    plan = make_plan(arch, shape, scores)
    pruned = prune_model(model, plan)
    d = arch.head_dim

    def edit(m):
        for i, kept in plan.q_heads.items():
            for h in set(range(arch.num_attention_heads)) - set(kept):
                m.model.layers[i].mixer.o_proj.weight[:, h * d:(h + 1) * d] = 0

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)


class _Skip(torch.nn.Module):
    def __init__(self, block_type):
        super().__init__()
        self.block_type = block_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@pytest.mark.parametrize("dropped", [[1], [3], [4], [0, 4, 7]])
def test_dropped_layers_equal_skipped_blocks(model, arch, scores, dropped):
    plan = make_plan(arch, Shape(), scores, dropped)
    pruned = prune_model(model, plan)

    def edit(m):
        for i in dropped:
            m.model.layers[i] = _Skip(m.model.layers[i].block_type)

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [
    Shape(hidden_size=40),
    Shape(mamba_heads=4),
    Shape(mamba_head_dim=8),
    Shape(hidden_size=48, ffn_size=64, mamba_heads=6, mamba_head_dim=10, attention_heads=2, kv_heads=1),
    Shape(experts=3, moe_ffn_size=24, shared_expert_ffn_size=40),  # MoE: routed experts, their width, shared expert
    Shape(hidden_size=48, ffn_size=64, experts=2, moe_ffn_size=16, shared_expert_ffn_size=32, experts_per_token=1),
])
def test_hidden_and_mamba_cuts_equal_plain_reference(model, arch, scores, shape):
    plan = make_plan(arch, shape, scores, [1] if shape.ffn_size else [])
    pruned, ref = prune_model(model, plan), reference_prune(model, plan)
    a, b = pruned.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(logits(pruned), logits(ref))
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params


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
