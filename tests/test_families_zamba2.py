"""Zamba2 on a tiny random model: Mamba layers and hybrid layers that call shared transformer blocks
(fed [hidden, embeddings], LoRA adapters). What is sound - depth of Mamba layers - is cut and checked
like every family; what is tied through the shared block is refused with the reason. (Keep-all, the
reference config's exact count and the engine's block-by-block pass: `test_families_common.py`,
`test_families_dense.py`.)"""

from __future__ import annotations

import family_helpers as fam
import pytest
from prune_helpers import load_streamed

from minitron.errors import InputError
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import open_checkpoint
from minitron.models.tensors import canonical_name
from minitron.prune.apply import prune_model
from minitron.prune.select import SHAPE_FLAGS, Shape, check_drop, drop_sequence, make_plan, validate_shape
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import build_model, tiny_zamba2_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, model, arch, _ = fam.tiny_family(tmp_path_factory, "zamba2", tiny_zamba2_config())
    return path, model, arch


@pytest.mark.parametrize(("tied", "blocks"), [(True, 2), (True, 1), (False, 2)])
def test_accounting_and_specs_match_the_module(tmp_path, tied, blocks):
    """Tied embeddings tie the shared blocks (stored once, under the first hybrid layer of each block);
    untied, transformers gives every hybrid layer a block of its own."""
    cfg = tiny_zamba2_config(tie_word_embeddings=tied, num_mem_blocks=blocks)
    arch, model = Architecture.from_config(cfg), build_model(cfg)
    assert arch.tie_word_embeddings == tied
    model.save_pretrained(tmp_path)
    fam.assert_specs_match(model, arch, tmp_path)
    stored = {canonical_name(k) for k in open_checkpoint(tmp_path).tensors}
    owners = {int(k.split(".")[1]) for k in stored if ".shared_transformer." in k}
    assert owners == ({1, 3} if tied and blocks == 2 else {1} if tied else {1, 3, 5})


@pytest.mark.parametrize("dropped", [[0], [2, 4]])
def test_dropped_mamba_layers_equal_zeroed_residual_writes(tiny, dropped):
    """Dropping layer 0 moves the stored shared block from layer 1 to layer 0 of the pruned model."""
    _, model, arch = tiny
    plan = make_plan(arch, Shape(), None, dropped)

    def edit(m):
        for i in dropped:
            m.model.layers[i].mamba.out_proj.weight.zero_()

    pruned = prune_model(model, plan)
    assert pruned.config.layers_block_type == [t for i, t in enumerate(model.config.layers_block_type) if i not in dropped]
    assert pruned.config.hybrid_layer_ids == plan.target().layers_of("*")
    fam.assert_equals_emulation(pruned, model, edit)
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params


def test_hybrid_layers_are_never_dropped(tiny):
    _, _, arch = tiny
    with pytest.raises(InputError, match="layer 3: zamba2 hybrid layers cannot be dropped") as e:
        check_drop(arch, [0, 3], {}, "--drop-layers")
    assert e.value.flag == "--drop-layers"
    assert drop_sequence(arch, [5, 0, 3, 2, 1, 4], {}) == [0, 2, 4]  # the search's drop order skips them


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("hidden_size", 32, "head dim 2 × hidden / heads"),
    ("ffn_size", 48, "shared transformer block serves every hybrid layer"),
    ("attention_heads", 2, "shared transformer block serves every hybrid layer"),
    ("kv_heads", 2, "shared transformer block serves every hybrid layer"),
    ("mamba_heads", 4, "mamba_expand × hidden / n_mamba_heads"),
    ("mamba_head_dim", 8, "mamba_expand × hidden / n_mamba_heads"),
])
def test_axes_tied_through_the_shared_block_are_refused(tiny, key, value, reason):
    _, _, arch = tiny
    with pytest.raises(InputError, match=reason) as e:
        validate_shape(arch, Shape(**{key: value}))
    assert e.value.flag == SHAPE_FLAGS[key] and "cannot be cut" in str(e.value)


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    path, model, arch = tiny
    plan = make_plan(arch, Shape(), None, [0, 4])
    assert len(prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)["files"]) > 1
    fam.assert_generates(load_streamed(tmp_path, model, plan, same_logits=True))


def test_estimate_equals_transformers_cache(tiny):
    """KV in each hybrid layer (the shared block's heads of 2 × hidden / heads), Mamba state in every layer."""
    _, model, arch = tiny
    kv, state, est = fam.cache_and_estimate(model, arch, dtype="fp32", engine="hf")  # transformers keeps conv_kernel columns
    assert (est.kv_cache_bytes, est.mamba_state_bytes) == (kv, state) and kv > 0


def test_scores_streaming_equals_in_memory_and_see_zeroed_units(tiny):
    path, model, arch = tiny
    mem = fam.scores_streamed_equal_in_memory(path, model, arch)  # streamed: layer 5 reads its block from layer 1
    assert mem["mamba_heads"].shape == (6, 8) and mem["ffn"].shape == (3, 96) and (mem["ffn"] > 0).all()

    def edit(m):  # Mamba head 5 of hybrid layer 3 (the 4th Mamba mixer): its out_proj columns (the default signal)
        p = arch.mamba_head_dim
        m.model.layers[3].mamba_decoder.mamba.out_proj.weight[:, 5 * p:6 * p] = 0

    z = fam.scores(fam.zeroed(model, edit), arch)
    assert z["mamba_heads"][3, 5] == 0 and (z["mamba_heads"][3] > 0).sum() == 7
