"""Mamba-2 hybrids (bamba, granitemoehybrid with and without routed experts) on tiny random models: accounting, every axis's cut,
streaming == in memory, stock loading, the memory model against transformers' cache, scoring,
and the cuts their configs cannot express refused with the reason."""

from __future__ import annotations

import copy

import pytest
import torch
from family_helpers import cache_bytes
from prune_helpers import load_streamed

from minitron.errors import InputError
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
from minitron.testing import HYBRID_TINY, make_tiny_model_dir, tiny_hybrid_config

IDS = torch.randint(3, 384, (2, 20), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module", params=sorted(HYBRID_TINY))
def tiny(request, tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp(request.param) / "model", tiny_hybrid_config(request.param))
    arch = Architecture.from_path(path)
    g = torch.Generator().manual_seed(1)
    scores = Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})
    return path, load_model(path), arch, scores


def _zeroed(model, edit):
    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def _down(layer):
    mlp = getattr(layer, "shared_mlp", None) or layer.feed_forward
    return getattr(mlp, "output_linear", None) or mlp.down_proj


def test_accounting_and_specs_match_the_module(tiny):
    path, model, arch, _ = tiny
    assert arch.pattern == "M*MM" and arch.ffn_layers() == [0, 1, 2, 3] and arch.mamba_layers() == [0, 2, 3]
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    got = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if arch.tie_word_embeddings:
        got.pop("lm_head.weight")
    assert got == {k: s.shape for k, s in model_specs(arch, layout="module").items()}
    assert {canonical_name(k) for k in open_checkpoint(path).tensors} == set(model_specs(arch))


def test_keep_all_is_bit_identical(tiny):
    _, model, arch, _ = tiny
    assert torch.equal(logits(model), logits(prune_model(model, PrunePlan.keep_all(arch))))


def test_ffn_equals_zeroed_down_columns(tiny):
    _, model, arch, scores = tiny
    plan = make_plan(arch, Shape(ffn_size=40), scores)

    def edit(m):
        for i, kept in plan.ffn.items():
            _down(m.model.layers[i]).weight[:, sorted(set(range(arch.intermediate_size)) - set(kept))] = 0

    pruned = prune_model(model, plan)
    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-3)


@pytest.mark.parametrize("shape", [Shape(attention_heads=4), Shape(kv_heads=2)])
def test_heads_equal_zeroed_o_proj_columns(tiny, shape):
    _, model, arch, scores = tiny
    plan = make_plan(arch, shape, scores)
    d = arch.head_dim

    def edit(m):
        for i, kept in plan.q_heads.items():
            for h in set(range(arch.num_attention_heads)) - set(kept):
                m.model.layers[i].self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0

    torch.testing.assert_close(logits(prune_model(model, plan)), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropped", [[1], [0, 3]])
def test_dropped_layers_equal_zeroed_residual_writes(tiny, dropped):
    _, model, arch, scores = tiny
    plan = make_plan(arch, Shape(), scores, dropped)

    def edit(m):
        for i in dropped:
            layer = m.model.layers[i]
            mixer_out = layer.mamba.out_proj if getattr(layer, "mamba", None) is not None else layer.self_attn.o_proj
            for lin in (mixer_out, _down(layer)):
                lin.weight.zero_()
                if lin.bias is not None:
                    lin.bias.zero_()
            if getattr(layer, "block_sparse_moe", None) is not None:  # Granite's routed experts write too
                layer.block_sparse_moe.experts.down_proj.zero_()

    pruned = prune_model(model, plan)
    assert Architecture.from_config(pruned.config.to_dict()).pattern == "".join(
        c for i, c in enumerate(arch.pattern) if i not in dropped)
    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [
    Shape(hidden_size=32),  # Mamba width 128 = 4 x 32
    Shape(mamba_heads=4, hidden_size=32),
    Shape(mamba_head_dim=8, hidden_size=32),
    Shape(hidden_size=32, ffn_size=64, mamba_heads=6, mamba_head_dim=16, attention_heads=4, kv_heads=2),
])
def test_hidden_and_mamba_cuts_equal_plain_reference(tiny, shape):
    """The gated norm and every RMSNorm read all their channels: the reference is the module-by-module copy."""
    _, model, arch, scores = tiny
    plan = make_plan(arch, shape, scores, [3] if shape.ffn_size else [])
    pruned, ref = prune_model(model, plan), reference_prune(model, plan)
    a, b = pruned.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(logits(pruned), logits(ref))
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params


def test_a_mamba_width_the_config_cannot_express_is_refused(tiny):
    _, _, arch, scores = tiny
    with pytest.raises(InputError, match="--hidden-size: cannot be cut: .*integer mamba_expand"):
        make_plan(arch, Shape(hidden_size=48), scores)  # 128 is not a multiple of 48
    with pytest.raises(InputError, match="--mamba-heads: cannot be cut"):
        make_plan(arch, Shape(mamba_heads=6), scores)  # 6 x 16 = 96 is not a multiple of 64


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    path, model, arch, scores = tiny
    plan = make_plan(arch, Shape(hidden_size=32, ffn_size=64, mamba_heads=4, attention_heads=4), scores, [2])
    assert len(prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)["files"]) > 1
    cfg = plan.target().to_config()
    assert cfg["mamba_expand"] == 2 and cfg["mamba_n_heads"] == 4 and cfg["head_dim"] == 12
    loaded = load_streamed(tmp_path, model, plan)
    assert loaded.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False).shape == (1, 9)


def test_estimate_equals_transformers_cache(tiny):
    _, model, arch, _ = tiny
    batch, ctx = 3, 17
    with torch.no_grad():
        out = model(torch.randint(3, 300, (batch, ctx)), use_cache=True)
    kv, state = cache_bytes(out.past_key_values)
    est = estimate(arch, context_length=ctx, batch_size=batch, dtype="fp32", engine="hf")  # transformers keeps conv_kernel columns
    assert (est.kv_cache_bytes, est.mamba_state_bytes) == (kv, state)


def test_scores_streaming_equals_in_memory_and_see_zeroed_units(tiny):
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
    assert mem["ffn"].shape == (4, 96) and mem["mamba_heads"].shape == (3, 8)

    def edit(m):  # Mamba head 5 of layer 2 (the second Mamba layer): its x-slice rows of in_proj
        p, inner = arch.mamba_head_dim, arch.mamba_intermediate
        m.model.layers[2].mamba.in_proj.weight[inner + 5 * p:inner + 6 * p] = 0

    zeroed, _, _ = score_tensors(InMemorySource(_zeroed(model, edit)), arch, toks, **kw)
    assert zeroed["mamba_heads"][1, 5] == 0 and (zeroed["mamba_heads"][1] > 0).sum() == 7


def test_granite_routed_experts_follow_hidden_and_keep_their_width(tiny):
    """--ffn-size cuts the shared MLP only; experts keep their number and width, and lose hidden channels.
    The expert axes themselves are `tests/test_granite_moe.py`'s; --shared-expert-ffn-size is refused."""
    _, model, arch, scores = tiny
    if not arch.n_routed_experts:
        pytest.skip("no routed experts")
    plan = make_plan(arch, Shape(hidden_size=32, ffn_size=64), scores, [1])
    cfg = plan.target().to_config()
    assert (cfg["num_local_experts"], cfg["intermediate_size"], cfg["shared_intermediate_size"]) == (4, 32, 64)
    moe = prune_model(model, plan).model.layers[0].block_sparse_moe
    assert moe.experts.gate_up_proj.shape == (4, 64, 32) and moe.router.weight.shape == (4, 32)
    assert set(arch.impl.unsupported_axes(arch)) == {"shared_expert_ffn_size"}
    from minitron.prune.select import validate_shape

    with pytest.raises(InputError, match="shared MLP is the --ffn-size axis") as e:
        validate_shape(arch, Shape(shared_expert_ffn_size=8))
    assert e.value.flag == "--shared-expert-ffn-size"
