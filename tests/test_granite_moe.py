"""Granite 4.0-H routed experts (`granitemoehybrid`, `num_local_experts > 0`): `--experts`, `--moe-ffn-size` and
`--experts-per-token` on transformers' own tiny model. The pruned model equals the original restricted to the
kept units (a router that never selects the dropped experts, zeroed output columns, a smaller top-k), in memory
and streamed; it loads with stock transformers; expert scores come from the hooks; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from prune_helpers import load_streamed
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.importance.aggregate import Aggregation
from minitron.importance.engine import InMemorySource
from minitron.recipes.score import score_tensors
from minitron.importance.scores import Scores, expected_shapes
from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.models.tensors import canonical_name
from minitron.prune.apply import prune_model
from minitron.prune.plan import PrunePlan
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import make_tiny_model_dir, tiny_hybrid_config

CFG = tiny_hybrid_config("granitemoehybrid_moe")  # M*MM, 4 experts of width 32, top-2, shared MLP
IDS = torch.randint(3, 384, (2, 20), generator=torch.Generator().manual_seed(0))
runner = CliRunner()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("granite-moe") / "model", CFG)
    arch = Architecture.from_path(path)
    g = torch.Generator().manual_seed(4)
    scores = Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})
    return load_model(path), arch, scores, path


def _masked_router(model, gone: dict[int, list[int]]):
    """`model` whose router in layer l gives the experts `gone[l]` logit −inf before its top-k (so they are
    never routable; the softmax over the chosen top-k logits is unchanged otherwise), via forward hooks."""
    handles = []
    for i, experts in gone.items():
        router = model.model.layers[i].block_sparse_moe.router

        def hook(mod, inputs, out, experts=experts):
            logits_ = out[0].clone()
            logits_[:, experts] = float("-inf")
            top, idx = logits_.topk(mod.top_k, dim=-1)
            return logits_, torch.softmax(top, dim=-1).type_as(inputs[0]), idx

        handles.append(router.register_forward_hook(hook))
    return handles


def _zeroed(model, edit):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def test_moe_is_a_component_of_every_layer_with_exact_active_accounting(tiny):
    model, arch, _, _ = tiny
    assert arch.moe_layers() == [0, 1, 2, 3] and arch.num_experts_per_tok == 2
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    expert = sum(p[0].numel() for p in model.model.layers[0].block_sparse_moe.experts.parameters())
    assert arch.total_params - arch.total_active_params == 4 * (4 - 2) * expert
    plain = Architecture.from_config(tiny_hybrid_config("granitemoehybrid"))
    assert plain.moe_layers() == [] and plain.total_active_params == plain.total_params


def test_keep_all_is_bit_identical_including_expert_tensors(tiny):
    model, arch, _, _ = tiny
    pruned = prune_model(model, PrunePlan.keep_all(arch))
    a, b = model.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(logits(model), logits(pruned))


@pytest.mark.parametrize("n", [3, 2])
def test_dropped_experts_equal_a_router_that_never_selects_them(tiny, n):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(experts=n), scores)
    assert len({plan.experts[i] for i in arch.moe_layers()}) > 1  # each layer keeps its own experts
    pruned = prune_model(model, plan)
    assert pruned.config.num_local_experts == n
    assert pruned.model.layers[0].block_sparse_moe.experts.gate_up_proj.shape == (n, 64, 64)
    handles = _masked_router(model, {i: sorted(set(range(4)) - set(plan.experts[i])) for i in arch.moe_layers()})
    try:
        want = logits(model)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(logits(pruned), want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-4)  # the cut matters


def test_expert_width_cut_equals_zeroed_output_linear_columns(tiny):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(moe_ffn_size=20), scores)
    kept = plan.moe_ffn[2]
    assert len({kept[e] for e in kept}) > 1  # each expert keeps its own neurons
    pruned = prune_model(model, plan)
    assert pruned.config.intermediate_size == 20 and pruned.config.shared_intermediate_size == 96
    assert pruned.model.layers[2].block_sparse_moe.experts.gate_up_proj.shape == (4, 40, 64)

    def edit(m):
        for i in arch.moe_layers():
            for e, neurons in plan.moe_ffn[i].items():
                gone = sorted(set(range(32)) - set(neurons))
                m.model.layers[i].block_sparse_moe.experts.down_proj[e][:, gone] = 0

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-4)
    # The gate and up halves of `input_linear` keep the same neurons.
    src = model.model.layers[2].block_sparse_moe.experts.gate_up_proj[1]
    e1 = list(kept[1])
    want = torch.cat([src[e1], src[[32 + k for k in e1]]])
    assert torch.equal(pruned.model.layers[2].block_sparse_moe.experts.gate_up_proj[1], want)


def test_experts_per_token_equals_the_original_router_with_that_top_k(tiny):
    model, arch, scores, _ = tiny
    plan = make_plan(arch, Shape(experts_per_token=1), scores)
    pruned = prune_model(model, plan)
    assert pruned.config.num_experts_per_tok == 1 and pruned.model.layers[0].block_sparse_moe.router.top_k == 1

    def edit(m):
        for layer in m.model.layers:
            layer.block_sparse_moe.router.top_k = 1

    torch.testing.assert_close(logits(pruned), logits(_zeroed(model, edit)), rtol=1e-6, atol=1e-6)
    assert plan.target().total_params == arch.total_params
    assert plan.target().total_active_params < arch.total_active_params


def test_streaming_equals_in_memory_loads_strictly_and_generates(tiny, tmp_path):
    model, arch, scores, path = tiny
    shape = Shape(hidden_size=32, ffn_size=64, experts=3, moe_ffn_size=20, experts_per_token=1)
    plan = make_plan(arch, shape, scores, [3])  # keep the attention layer: generate needs one
    info = prune_checkpoint(open_checkpoint(path), plan, tmp_path, max_shard_bytes=60_000)
    cfg = plan.target().to_config()
    assert (cfg["num_local_experts"], cfg["intermediate_size"], cfg["shared_intermediate_size"],
            cfg["num_experts_per_tok"]) == (3, 20, 64, 1)
    written = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert info["tensors"] == len(written)
    assert "layers.2.block_sparse_moe.input_linear.weight" in {canonical_name(k) for k in written}  # stored names
    loaded = load_streamed(tmp_path, model, plan)  # strict keys, == in memory, params == params_after
    assert loaded.model.layers[0].block_sparse_moe.experts.gate_up_proj.shape == (3, 40, 32)
    assert loaded.generate(IDS[:1, :8], max_new_tokens=4, do_sample=False).shape == (1, 12)


# ---------------------------------------------------------------------- scores
def _score(model, arch, toks, metric="reap"):
    out, _, _ = score_tensors(InMemorySource(model), arch, toks, agg=Aggregation(), batch_size=2,
                              layer_metric="cosine", expert_metric=metric)
    return out


def _tokens(n=4, t=16):
    return torch.randint(3, 384, (n, t), generator=torch.Generator().manual_seed(2))


def test_expert_scores_equal_a_hand_run_router(tiny):
    model, arch, _, _ = tiny
    toks = _tokens()
    moe = model.model.layers[2].block_sparse_moe
    seen = []
    handle = moe.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().reshape(-1, 64)))
    with torch.no_grad():
        model(toks, use_cache=False)
    handle.remove()
    h = torch.cat(seen)
    got = _score(model, arch, toks)
    with torch.no_grad():
        _, w, idx = moe.router(h)  # transformers' own router on the captured input
        ex = moe.experts
        gate_norm, count, act = torch.zeros(4, dtype=torch.float64), torch.zeros(4), torch.zeros(4, 32)
        for t in range(h.shape[0]):
            for pos in range(idx.shape[1]):
                e = int(idx[t, pos])
                gate, up = (ex.gate_up_proj[e] @ h[t]).chunk(2)
                a = ex.act_fn(gate) * up
                gate_norm[e] += float(w[t, pos]) * float((ex.down_proj[e] @ a).norm())
                count[e] += 1
                act[e] += a.abs()
    assert got["experts"].shape == (4, 4) and got["moe_ffn"].shape == (4, 4, 32)
    assert got["shared_expert_ffn"].shape == (4, 0)
    torch.testing.assert_close(got["experts"][2].double(), gate_norm / count.clamp_min(1).double(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got["moe_ffn"][2], act / count.clamp_min(1)[:, None], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got["experts_frequency"][2], count / h.shape[0], rtol=1e-6, atol=1e-7)


def test_an_expert_the_router_never_selects_scores_zero(tiny):
    model, arch, _, _ = tiny
    handles = _masked_router(model, {1: [3]})
    try:
        got = _score(model, arch, _tokens())
    finally:
        for h in handles:
            h.remove()
    for name in ("experts", "experts_frequency", "experts_output_norm"):
        assert float(got[name][1][3]) == 0.0 and int((got[name][1] > 0).sum()) == 3
    assert float(got["moe_ffn"][1][3].abs().sum()) == 0.0


def test_score_then_prune_keeps_the_top_experts(tiny, text_file, tmp_path):
    _, _, _, path = tiny
    out = tmp_path / "scores"
    r = runner.invoke(app, ["score", str(path), "--data", str(text_file), "--out", str(out), "--samples", "4",
                            "--seq-len", "32", "--batch-size", "4", "--device", "cpu", "--layer-metric", "cosine",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tensors"]["experts"] == [4, 4]
    scores = Scores.load(out)
    r = runner.invoke(app, ["prune", str(path), "--scores", str(out), "--experts", "3", "--moe-ffn-size", "16",
                            "--out", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    kept = json.loads((tmp_path / "p" / "minitron.json").read_text())["result"]["indices"]
    for j in range(4):
        top = sorted(torch.argsort(scores["experts"][j], descending=True, stable=True)[:3].tolist())
        assert kept["experts"][str(j)] == top
        assert all(len(v) == 16 for v in kept["moe_ffn"][str(j)].values())


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,flag,match", [
    (["--experts", 5], "--experts", "larger than the model's 4"),
    (["--experts", 1], "--experts", "below num_experts_per_tok"),
    (["--experts-per-token", 0], "--experts-per-token", ">= 1"),
    (["--experts", 2, "--experts-per-token", 3], "--experts-per-token", "above the 2 experts"),
    (["--moe-ffn-size", 33], "--moe-ffn-size", "larger than the model's 32"),
    (["--shared-expert-ffn-size", 8], "--shared-expert-ffn-size", "use --ffn-size"),
])
def test_bad_expert_input_one_line_exit_2_nothing_written(tiny, tmp_path, args, flag, match):
    _, _, _, path = tiny
    out = tmp_path / "out"
    r = runner.invoke(app, ["prune", str(path), *map(str, args), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and match in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
