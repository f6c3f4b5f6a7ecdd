"""Mamba-2 hybrids (bamba, granitemoehybrid with and without routed experts) on tiny random models: accounting,
hidden and Mamba cuts, streaming == in memory, stock loading, the memory model against transformers'
cache, scoring, and the cuts their configs cannot express refused with the reason. (Keep-all, FFN, head and
depth cuts: `test_families_common.py`.)"""

from __future__ import annotations

import family_helpers as fam
import pytest
from prune_helpers import load_streamed

from minitron.errors import InputError
from minitron.models.checkpoint import open_checkpoint
from minitron.prune.apply import prune_model
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import HYBRID_TINY, tiny_hybrid_config


@pytest.fixture(scope="module", params=sorted(HYBRID_TINY))
def tiny(request, tmp_path_factory):
    return fam.tiny_family(tmp_path_factory, request.param, tiny_hybrid_config(request.param))


def test_accounting_and_specs_match_the_module(tiny):
    path, model, arch, _ = tiny
    assert arch.pattern == "M*MM" and arch.ffn_layers() == [0, 1, 2, 3] and arch.mamba_layers() == [0, 2, 3]
    fam.assert_specs_match(model, arch, path)


@pytest.mark.parametrize("shape", [
    Shape(hidden_size=32),  # Mamba width 128 = 4 x 32
    Shape(mamba_heads=4, hidden_size=32),
    Shape(mamba_head_dim=8, hidden_size=32),
    Shape(hidden_size=32, ffn_size=64, mamba_heads=6, mamba_head_dim=16, attention_heads=4, kv_heads=2),
])
def test_hidden_and_mamba_cuts_equal_plain_reference(tiny, shape):
    """The gated norm and every RMSNorm read all their channels: the reference is the module-by-module copy."""
    _, model, arch, unit_scores = tiny
    fam.assert_equals_reference(model, make_plan(arch, shape, unit_scores, [3] if shape.ffn_size else []))


def test_a_mamba_width_the_config_cannot_express_is_refused(tiny):
    _, _, arch, unit_scores = tiny
    with pytest.raises(InputError, match="--hidden-size: cannot be cut: .*integer mamba_expand"):
        make_plan(arch, Shape(hidden_size=48), unit_scores)  # 128 is not a multiple of 48
    with pytest.raises(InputError, match="--mamba-heads: cannot be cut"):
        make_plan(arch, Shape(mamba_heads=6), unit_scores)  # 6 x 16 = 96 is not a multiple of 64


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    path, model, arch, unit_scores = tiny
    plan = make_plan(arch, Shape(hidden_size=32, ffn_size=64, mamba_heads=4, attention_heads=4), unit_scores, [2])
    assert len(prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)["files"]) > 1
    cfg = plan.target().to_config()
    assert cfg["mamba_expand"] == 2 and cfg["mamba_n_heads"] == 4 and cfg["head_dim"] == 12
    fam.assert_generates(load_streamed(tmp_path, model, plan))


def test_estimate_equals_transformers_cache(tiny):
    _, model, arch, _ = tiny
    kv, state, est = fam.cache_and_estimate(model, arch, dtype="fp32", engine="hf")  # transformers keeps conv_kernel columns
    assert (est.kv_cache_bytes, est.mamba_state_bytes) == (kv, state)


def test_scores_streaming_equals_in_memory_and_see_zeroed_units(tiny):
    path, model, arch, _ = tiny
    mem = fam.scores_streamed_equal_in_memory(path, model, arch)
    assert mem["ffn"].shape == (4, 96) and mem["mamba_heads"].shape == (3, 8)

    def edit(m):  # Mamba head 5 of layer 2 (the second Mamba layer): its out_proj columns (the default signal)
        p = arch.mamba_head_dim
        m.model.layers[2].mamba.out_proj.weight[:, 5 * p:6 * p] = 0

    z = fam.scores(fam.zeroed(model, edit), arch)
    assert z["mamba_heads"][1, 5] == 0 and (z["mamba_heads"][1] > 0).sum() == 7


def test_granite_routed_experts_follow_hidden_and_keep_their_width(tiny):
    """--ffn-size cuts the shared MLP only; experts keep their number and width, and lose hidden channels.
    The expert axes themselves are `tests/test_granite_moe.py`'s; --shared-expert-ffn-size is refused."""
    _, model, arch, unit_scores = tiny
    if not arch.n_routed_experts:
        pytest.skip("no routed experts")
    plan = make_plan(arch, Shape(hidden_size=32, ffn_size=64), unit_scores, [1])
    cfg = plan.target().to_config()
    assert (cfg["num_local_experts"], cfg["intermediate_size"], cfg["shared_intermediate_size"]) == (4, 32, 64)
    moe = prune_model(model, plan).model.layers[0].block_sparse_moe
    assert moe.experts.gate_up_proj.shape == (4, 64, 32) and moe.router.weight.shape == (4, 32)
    assert set(arch.impl.unsupported_axes(arch)) == {"shared_expert_ffn_size"}
    from minitron.prune.select import validate_shape

    with pytest.raises(InputError, match="shared MLP is the --ffn-size axis") as e:
        validate_shape(arch, Shape(shared_expert_ffn_size=8))
    assert e.value.flag == "--shared-expert-ffn-size"
