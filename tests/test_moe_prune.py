"""MoE axes (routed experts, expert width, shared expert, top-k): the pruned model equals the original
restricted to the kept units, in memory and streamed, and loads with stock transformers."""

from __future__ import annotations

import json

import pytest
import torch
from prune_helpers import load_streamed
from test_prune_apply import IDS, _zeroed, logits

from minitron.importance.scores import Scores, expected_shapes
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.models.tensors import canonical_name
from minitron.prune.apply import prune_model
from minitron.prune.plan import PrunePlan
from minitron.prune.reference import reference_prune
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import build_model, make_tiny_model_dir, tiny_config

MOE = 4  # the MoE block of the tiny pattern M-M*EM-*M


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny hybrid with a trained-looking router (non-zero `e_score_correction_bias`, so that a wrong
    cut of it would change the routing), written as a checkpoint; its architecture; seeded random scores."""
    model = build_model()
    with torch.no_grad():
        bias = model.model.layers[MOE].mixer.gate.e_score_correction_bias
        bias.copy_(0.05 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(7)))
    path = make_tiny_model_dir(tmp_path_factory.mktemp("moe") / "model", model=model)
    model = load_model(path)
    assert float(model.model.layers[MOE].mixer.gate.e_score_correction_bias.abs().min()) > 0
    arch = Architecture.from_path(path)
    g = torch.Generator().manual_seed(3)
    scores = Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})
    return model, arch, scores, path


def test_keep_all_is_bit_identical_including_moe_tensors(tiny):
    model, arch, _, _ = tiny
    pruned = prune_model(model, PrunePlan.keep_all(arch))
    a, b = model.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(logits(model), logits(pruned))


@pytest.mark.parametrize("n", [3, 2])
def test_dropped_experts_equal_a_router_that_never_selects_them(tiny, n):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(experts=n), scores)
    assert plan.target().n_routed_experts == n
    pruned = prune_model(model, plan)

    def edit(m):
        gone = sorted(set(range(arch.n_routed_experts)) - set(plan.experts[MOE]))
        m.model.layers[MOE].mixer.gate.e_score_correction_bias[gone] = float("-inf")

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-4)  # the cut matters


def test_expert_width_cut_equals_zeroed_down_proj_columns(tiny):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(moe_ffn_size=20), scores)
    kept = plan.moe_ffn[MOE]
    assert len({kept[e] for e in kept}) > 1  # each expert keeps its own neurons
    pruned = prune_model(model, plan)

    def edit(m):
        for e, neurons in kept.items():
            gone = sorted(set(range(arch.moe_intermediate_size)) - set(neurons))
            m.model.layers[MOE].mixer.experts.down_proj[e][:, gone] = 0

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-4)


def test_shared_expert_cut_equals_zeroed_down_proj_columns(tiny):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(shared_expert_ffn_size=30), scores)
    pruned = prune_model(model, plan)

    def edit(m):
        gone = sorted(set(range(arch.moe_shared_expert_intermediate_size)) - set(plan.shared_ffn[MOE]))
        m.model.layers[MOE].mixer.shared_experts.down_proj.weight[:, gone] = 0

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-4)


def test_experts_per_token_equals_the_original_router_with_that_top_k(tiny):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(experts_per_token=1), scores)
    assert plan.target().num_experts_per_tok == 1 and plan.target().to_config()["num_experts_per_tok"] == 1
    pruned = prune_model(model, plan)
    assert pruned.model.layers[MOE].mixer.gate.top_k == 1

    def edit(m):
        m.model.layers[MOE].mixer.gate.top_k = 1

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-6, atol=1e-6)
    assert plan.target().total_params == arch.total_params  # top-k changes the active count only
    assert plan.target().total_active_params < arch.total_active_params


def test_latent_moe_cuts_equal_plain_reference():
    cfg = tiny_config(hybrid_override_pattern="E*E-M", moe_latent_size=24)
    model, arch = build_model(cfg), Architecture.from_config(cfg)
    g = torch.Generator().manual_seed(5)
    scores = Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})
    plan = make_plan(arch, Shape(hidden_size=48, experts=3, moe_ffn_size=16, shared_expert_ffn_size=24), scores)
    pruned, ref = prune_model(model, plan), reference_prune(model, plan)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in pruned.state_dict().items())
    assert pruned.model.layers[0].mixer.experts.up_proj.shape == (3, 16, 24)  # latent channels are not cut
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params


def test_grouped_routing_keeps_the_same_count_in_each_group():
    cfg = tiny_config(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2)
    model, arch = build_model(cfg), Architecture.from_config(cfg)
    g = torch.Generator().manual_seed(2)
    scores = Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})
    plan = make_plan(arch, Shape(experts=4), scores)
    assert [e // 4 for e in plan.experts[MOE]] == [0, 0, 1, 1]
    pruned = prune_model(model, plan)

    def edit(m):
        gone = sorted(set(range(8)) - set(plan.experts[MOE]))
        m.model.layers[MOE].mixer.gate.e_score_correction_bias[gone] = -1e4  # finite: group scores stay defined

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-6, atol=1e-6)


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    model, arch, scores, path = tiny
    shape = Shape(hidden_size=48, experts=3, moe_ffn_size=20, shared_expert_ffn_size=40, experts_per_token=1)
    plan = make_plan(arch, shape, scores, [1])
    ckpt = open_checkpoint(path)
    info = prune_checkpoint(ckpt, plan, tmp_path, max_shard_bytes=60_000)
    cfg = plan.target().to_config()
    assert (cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["moe_shared_expert_intermediate_size"],
            cfg["num_experts_per_tok"]) == (3, 20, 40, 1)
    written = set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"])
    # One tensor per kept expert, renumbered 0..2 (layer 4 is block 3 once block 1 is gone).
    assert {canonical_name(k) for k in written if ".experts." in k and k.endswith("up_proj.weight")} == \
        {f"layers.3.mixer.experts.{j}.up_proj.weight" for j in range(3)}
    assert info["tensors"] == len(written)
    loaded = load_streamed(tmp_path, model, plan)
    out = loaded.generate(IDS[:1, :8], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)
