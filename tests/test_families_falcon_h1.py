"""Falcon-H1 on a tiny random model: attention and Mamba-2 side by side in every layer, `mamba_d_ssm`
(a Mamba width that is not expand × hidden), the optional gated norm, µP multipliers. Accounting,
hidden and Mamba cuts, streaming == in memory, stock loading, the memory model against
transformers' cache, scoring. (Keep-all, FFN, head and depth cuts, the reference config's exact count and the
engine's block-by-block pass: `test_families_common.py`, `test_families_dense.py`.)"""

from __future__ import annotations

import family_helpers as fam
import pytest
from prune_helpers import load_streamed

from minitron.models.architecture import Architecture
from minitron.models.checkpoint import open_checkpoint
from minitron.models.tensors import model_specs
from minitron.prune.apply import prune_model
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import build_model, tiny_falcon_h1_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return fam.tiny_family(tmp_path_factory, "falcon_h1", tiny_falcon_h1_config())


def test_accounting_and_specs_match_the_module(tiny):
    path, model, arch, _ = tiny
    assert arch.pattern == "***" and arch.attention_layers() == arch.mamba_layers() == arch.ffn_layers() == [0, 1, 2]
    assert arch.mamba_intermediate == 96 != 2 * arch.hidden_size and not arch.tie_word_embeddings
    fam.assert_specs_match(model, arch, path)
    # The module code's segment order: in_proj = [z | x | B | C | dt], split([d_ssm, conv_dim, heads]).
    mixer = model.model.layers[0].mamba
    assert (mixer.intermediate_size, mixer.conv_dim, mixer.num_heads) == (96, 96 + 2 * 2 * 16, 8)
    assert mixer.in_proj.out_features == 96 + mixer.conv_dim + 8 and mixer.norm.n_groups == 2


def test_mamba_heads_without_the_gated_norm_equal_zeroed_out_proj_columns():
    """The released models have no gated norm (`mamba_rms_norm` false): each head's output is its own, so a
    cut head equals its out_proj columns zeroed."""
    cfg = tiny_falcon_h1_config(mamba_rms_norm=False)
    model, arch = build_model(cfg), Architecture.from_config(cfg)
    assert "layers.0.mamba.norm.weight" not in model_specs(arch)
    plan = make_plan(arch, Shape(mamba_heads=4), fam.random_scores(arch, 3))

    def edit(m):
        for i, kept in plan.mamba_heads.items():
            fam.zero_columns(m.model.layers[i].mamba.out_proj.weight, fam.dropped(arch.mamba_num_heads, kept), arch.mamba_head_dim)

    pruned = prune_model(model, plan)
    assert pruned.config.mamba_d_ssm == 48 and sum(x.numel() for x in pruned.parameters()) == plan.target().total_params
    fam.assert_equals_emulation(pruned, model, edit)


@pytest.mark.parametrize("shape", [
    Shape(hidden_size=32),  # the Mamba width (96) stays: it does not follow the hidden size
    Shape(mamba_heads=4),
    Shape(mamba_head_dim=8, hidden_size=48),
    Shape(hidden_size=40, ffn_size=64, mamba_heads=6, mamba_head_dim=8, attention_heads=4, kv_heads=2),
])
def test_hidden_and_mamba_cuts_equal_plain_reference(tiny, shape):
    """The gated norm and every RMSNorm read all their channels: the reference is the module-by-module copy."""
    _, model, arch, unit_scores = tiny
    fam.assert_equals_reference(model, make_plan(arch, shape, unit_scores, [2] if shape.ffn_size else []), buffers=True)


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    path, model, arch, unit_scores = tiny
    plan = make_plan(arch, Shape(hidden_size=32, ffn_size=64, mamba_heads=4, attention_heads=4), unit_scores, [1])
    assert len(prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)["files"]) > 1
    cfg = plan.target().to_config()
    assert (cfg["mamba_d_ssm"], cfg["mamba_n_heads"], cfg["head_dim"], cfg["num_hidden_layers"]) == (48, 4, 12, 2)
    fam.assert_generates(load_streamed(tmp_path, model, plan, same_logits=True))  # mup_vector rebuilt from the pruned config


def test_estimate_equals_transformers_cache(tiny):
    """Each layer holds a KV cache and a Mamba state (transformers' `LinearAttentionAndFullAttentionLayer`)."""
    _, model, arch, _ = tiny
    kv, state, est = fam.cache_and_estimate(model, arch, dtype="fp32", engine="hf")  # transformers keeps conv_kernel columns
    assert (est.kv_cache_bytes, est.mamba_state_bytes) == (kv, state) and kv > 0 and state > 0


def test_scores_streaming_equals_in_memory_and_see_zeroed_units(tiny):
    path, model, arch, _ = tiny
    mem = fam.scores_streamed_equal_in_memory(path, model, arch)
    assert mem["mamba_heads"].shape == (3, 8) and mem["attention_heads"].shape == (3, 8) and mem["ffn"].shape == (3, 96)

    def edit(m):  # Mamba head 5 of layer 1 (its out_proj columns: the default signal); FFN neuron 7 of layer 2
        p = arch.mamba_head_dim
        m.model.layers[1].mamba.out_proj.weight[:, 5 * p:6 * p] = 0
        m.model.layers[2].feed_forward.up_proj.weight[7] = 0

    z = fam.scores(fam.zeroed(model, edit), arch)
    assert z["mamba_heads"][1, 5] == 0 and (z["mamba_heads"][1] > 0).sum() == 7
    assert z["ffn"][2, 7] == 0 and (z["ffn"][2] > 0).sum() == 95
