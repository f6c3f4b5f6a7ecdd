"""Zamba2 on a tiny random model: Mamba layers and hybrid layers that call shared transformer blocks
(fed [hidden, embeddings], LoRA adapters). What is sound - depth of Mamba layers - is cut and checked
like every family; what is tied through the shared block is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from family_helpers import (
    IDS,
    cache_bytes,
    engine_logits,
    logits,
    scores,
    scores_streamed_equal_in_memory,
    zeroed,
)

from minitron.errors import InputError
from minitron.memory import estimate
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.models.tensors import canonical_name, model_specs
from minitron.prune.apply import prune_model
from minitron.prune.plan import PrunePlan
from minitron.prune.select import SHAPE_FLAGS, Shape, check_drop, drop_sequence, make_plan, validate_shape
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import build_model, make_tiny_model_dir, tiny_zamba2_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("zamba2") / "model", tiny_zamba2_config())
    return path, load_model(path), Architecture.from_path(path)


def test_reference_config_count_is_exact():
    from transformers import AutoConfig, AutoModelForCausalLM

    from minitron.assets import CONFIGS

    cfg = json.loads((CONFIGS / "zamba2-1.2b" / "config.json").read_text())
    arch = Architecture.from_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert arch.total_params == sum(p.numel() for p in model.parameters()) == 1_215_064_704
    assert arch.pattern.count("*") == 6 and (arch.head_dim, arch.mamba_head_dim) == (128, 64)  # 2 × 2048 / 32


@pytest.mark.parametrize(("tied", "blocks"), [(True, 2), (True, 1), (False, 2)])
def test_accounting_and_specs_match_the_module(tmp_path, tied, blocks):
    """Tied embeddings tie the shared blocks (stored once, under the first hybrid layer of each block);
    untied, transformers gives every hybrid layer a block of its own."""
    cfg = tiny_zamba2_config(tie_word_embeddings=tied, num_mem_blocks=blocks)
    arch, model = Architecture.from_config(cfg), build_model(cfg)
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    got = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        got.pop("lm_head.weight")
    assert got == {k: s.shape for k, s in model_specs(arch, layout="module").items()}
    model.save_pretrained(tmp_path)
    stored = {canonical_name(k) for k in open_checkpoint(tmp_path).tensors}
    assert stored == set(model_specs(arch))
    owners = {int(k.split(".")[1]) for k in stored if ".shared_transformer." in k}
    assert owners == ({1, 3} if tied and blocks == 2 else {1} if tied else {1, 3, 5})


def test_keep_all_is_bit_identical(tiny):
    _, model, arch = tiny
    assert torch.equal(logits(model), logits(prune_model(model, PrunePlan.keep_all(arch))))


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
    torch.testing.assert_close(logits(pruned), logits(zeroed(model, edit)), rtol=1e-5, atol=1e-5)
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
    from transformers import AutoModelForCausalLM

    path, model, arch = tiny
    plan = make_plan(arch, Shape(), None, [0, 4])
    assert len(prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)["files"]) > 1
    (tmp_path / "config.json").write_text(json.dumps(plan.target().to_config()))
    open_checkpoint(tmp_path).check()
    loaded, li = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    assert not li["missing_keys"] and not li["unexpected_keys"] and not li.get("mismatched_keys")
    in_mem = prune_model(model, plan)
    got, want = loaded.state_dict(), in_mem.state_dict()
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
    assert sum(p.numel() for p in loaded.parameters()) == plan.target().total_params
    assert torch.equal(logits(loaded.eval()), logits(in_mem))
    assert loaded.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False).shape == (1, 9)


def test_estimate_equals_transformers_cache(tiny):
    """KV in each hybrid layer (the shared block's heads of 2 × hidden / heads), Mamba state in every layer."""
    _, model, arch = tiny
    batch, ctx = 3, 17
    with torch.no_grad():
        out = model(torch.randint(3, 300, (batch, ctx)), use_cache=True)
    kv, state = cache_bytes(out.past_key_values)
    est = estimate(arch, context_length=ctx, batch_size=batch, dtype="fp32", engine="hf")  # transformers keeps conv_kernel columns
    assert (est.kv_cache_bytes, est.mamba_state_bytes) == (kv, state) and kv > 0


def test_the_engines_block_by_block_pass_equals_the_model(tiny):
    """Each block is called with the embeddings the shared block concatenates to its input."""
    _, model, _ = tiny
    assert torch.equal(engine_logits(model), logits(model))


def test_scores_streaming_equals_in_memory_and_see_zeroed_units(tiny):
    path, model, arch = tiny
    mem = scores_streamed_equal_in_memory(path, model, arch)  # streamed: layer 5 reads its block from layer 1
    assert mem["mamba_heads"].shape == (6, 8) and mem["ffn"].shape == (3, 96) and (mem["ffn"] > 0).all()

    def edit(m):  # Mamba head 5 of hybrid layer 3 (the 4th Mamba mixer): its x-slice rows of in_proj
        p, inner = arch.mamba_head_dim, arch.mamba_intermediate
        m.model.layers[3].mamba_decoder.mamba.in_proj.weight[inner + 5 * p:inner + 6 * p] = 0

    z = scores(zeroed(model, edit), arch)
    assert z["mamba_heads"][3, 5] == 0 and (z["mamba_heads"][3] > 0).sum() == 7
