"""Routed-expert importance (REAP, frequency, output norm), expert and shared-expert neurons: the pure
formulas against a token-by-token loop, the hooks on transformers' own tiny MoE against a hand-run router,
known answers, streaming == in memory, and `score` -> `prune --scores` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from family_helpers import captured_input
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.importance import experts as ex
from minitron.importance.aggregate import Aggregation
from minitron.importance.engine import InMemorySource
from minitron.models.architecture import Architecture
from minitron.recipes.score import score_tensors
from minitron.testing import build_model, make_tiny_model_dir, tiny_config

CFG = tiny_config(n_routed_experts=6, num_experts_per_tok=2)
ARCH = Architecture.from_config(CFG)
MOE = 4


def relu2(t):
    return torch.relu(t) ** 2


def naive_expert_scores(x, idx, w, up, down, act, metric):
    """Token by token, expert by expert: the formulas of `minitron.importance.experts` written out."""
    n_exp = up.shape[0]
    routed, gate_norm, norm = [0] * n_exp, [0.0] * n_exp, [0.0] * n_exp
    acts = [torch.zeros(up.shape[1], dtype=torch.float64) for _ in range(n_exp)]
    for t in range(x.shape[0]):
        for pos in range(idx.shape[1]):
            e = int(idx[t, pos])
            a = act(up[e] @ x[t])
            y = float((down[e] @ a).norm())
            routed[e] += 1
            gate_norm[e] += float(w[t, pos]) * y
            norm[e] += y
            acts[e] += a.abs().double()
    if metric == "reap":
        s = [gate_norm[e] / routed[e] if routed[e] else 0.0 for e in range(n_exp)]
    elif metric == "frequency":
        s = [routed[e] / x.shape[0] for e in range(n_exp)]
    else:
        s = [norm[e] / routed[e] if routed[e] else 0.0 for e in range(n_exp)]
    neurons = torch.stack([acts[e] / max(routed[e], 1) for e in range(n_exp)])
    return torch.tensor(s, dtype=torch.float64), neurons


@pytest.mark.parametrize("metric", ex.EXPERT_METRICS)
def test_formulas_match_a_token_by_token_loop(metric):
    g = torch.Generator().manual_seed(0)
    n, d, f, n_exp, k = 40, 8, 5, 6, 2
    x, up, down = torch.randn(n, d, generator=g), torch.randn(n_exp, f, d, generator=g), torch.randn(n_exp, d, f, generator=g)
    # Expert 5 is never chosen (it must score 0); the rest at random.
    idx = torch.stack([torch.randperm(5, generator=g)[:k] for _ in range(n)])
    w = torch.rand(n, k, generator=g)
    sums = ex.expert_sums(x, idx, w, up, down, relu2)
    # Split into two batches: the sums add up.
    halves = [ex.expert_sums(x[s], idx[s], w[s], up, down, relu2) for s in (slice(0, 17), slice(17, None))]
    assert all(torch.allclose(sums[k_], halves[0][k_] + halves[1][k_]) for k_ in sums)
    want, want_neurons = naive_expert_scores(x, idx, w, up, down, relu2, metric)
    got = ex.expert_scores(sums, float(n), metric)
    assert torch.allclose(got, want, rtol=1e-5) and float(got[5]) == 0.0
    assert torch.allclose(ex.expert_neuron_scores(sums), want_neurons, rtol=1e-5)


def test_metric_names():
    assert ex.norm_metric("REAP") == "reap" and ex.norm_metric("output-norm") == "output_norm"
    assert ex.norm_metric("bogus") is None


def score(model, toks, metric="reap"):
    out, _, _ = score_tensors(InMemorySource(model), ARCH, toks, agg=Aggregation(), batch_size=3, layer_metric="cosine",
                              expert_metric=metric)
    return out


def tokens(n=4, t=16, seed=0):
    return torch.randint(3, 384, (n, t), generator=torch.Generator().manual_seed(seed))


def test_hooks_on_the_tiny_model_equal_a_hand_run_router():
    model = build_model(CFG)
    toks = tokens()
    mixer = model.model.layers[MOE].mixer
    h = captured_input(model, mixer, toks)
    with torch.no_grad():
        _, w, idx = mixer.gate(h)  # transformers' own router on the captured MoE input
    e = mixer.experts
    got = score(model, toks)
    for metric in ex.EXPERT_METRICS:
        want, neurons = naive_expert_scores(h, idx, w, e.up_proj.detach(), e.down_proj.detach(), e.act_fn, metric)
        name = "experts" if metric == "reap" else f"experts_{metric}"
        torch.testing.assert_close(got[name][0].double(), want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got["moe_ffn"][0].double(), neurons, rtol=1e-4, atol=1e-7)
    assert got["experts"].shape == (1, 6) and got["moe_ffn"].shape == (1, 6, 32)
    assert got["shared_expert_ffn"].shape == (1, 48) and float(got["shared_expert_ffn"].min()) >= 0


def edited(edit):
    model = build_model(CFG)
    with torch.no_grad():
        edit(model.model.layers[MOE].mixer)
    return model


def test_an_expert_with_no_output_ranks_last_on_reap_and_norm_but_not_frequency():
    model = edited(lambda m: m.experts.down_proj[3].zero_())
    got = score(model, tokens())
    freq = got["experts_frequency"][0]
    assert float(freq[3]) > 0  # it is still routed to
    for name in ("experts", "experts_output_norm"):
        assert float(got[name][0][3]) == 0.0
        assert all(float(got[name][0][e]) > 0 for e in range(6) if e != 3 and float(freq[e]) > 0)


def test_an_expert_the_router_never_selects_scores_zero_everywhere():
    def edit(m):
        m.gate.e_score_correction_bias[2] = float("-inf")

    got = score(edited(edit), tokens())
    for name in ("experts", "experts_frequency", "experts_output_norm"):
        assert float(got[name][0][2]) == 0.0 and int((got[name][0] > 0).sum()) >= 3
    assert float(got["moe_ffn"][0][2].abs().sum()) == 0.0
    # Frequencies sum to top-k (each token picks num_experts_per_tok experts).
    assert abs(float(got["experts_frequency"][0].sum()) - CFG["num_experts_per_tok"]) < 1e-6


def test_zeroed_expert_and_shared_neurons_rank_last():
    def edit(m):
        m.experts.up_proj[1][7].zero_()  # neuron 7 of expert 1
        m.shared_experts.up_proj.weight[11].zero_()

    got = score(edited(edit), tokens())
    assert float(got["moe_ffn"][0][1][7]) == 0.0 and int(got["moe_ffn"][0][1].argmin()) == 7
    assert float(got["shared_expert_ffn"][0][11]) == 0.0 and int(got["shared_expert_ffn"][0].argmin()) == 11
    assert float(got["shared_expert_ffn"][0].sort().values[1]) > 0


def test_streaming_scores_equal_in_memory(tmp_path):
    from minitron.models.block_stream import StreamingSource

    model = build_model(CFG)
    path = make_tiny_model_dir(tmp_path / "m", CFG, model=model)
    toks = tokens(n=3)
    kw = dict(agg=Aggregation(), batch_size=2, layer_metric="cosine")
    mem, _, _ = score_tensors(InMemorySource(model), ARCH, toks, **kw)
    streamed, _, _ = score_tensors(StreamingSource(path), ARCH, toks, **kw)
    for name in ("experts", "experts_frequency", "experts_output_norm", "moe_ffn", "shared_expert_ffn"):
        torch.testing.assert_close(mem[name], streamed[name], rtol=1e-5, atol=1e-7)


runner = CliRunner()
ARGS = ["--samples", "4", "--seq-len", "32", "--batch-size", "4", "--device", "cpu", "--layer-metric", "cosine"]


def test_score_then_prune_keeps_the_top_experts(tiny_model_dir, text_file, tmp_path):
    from minitron.importance.scores import Scores

    out = tmp_path / "scores"
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *ARGS,
                            "--expert-metric", "frequency", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["expert_metric"] == "frequency" and doc["tensors"]["experts"] == [1, 4]
    assert set(doc["tensors"]) >= {"experts_reap", "experts_output_norm", "moe_ffn", "shared_expert_ffn"}
    scores = Scores.load(out)
    r = runner.invoke(app, ["prune", str(tiny_model_dir), "--scores", str(out), "--experts", "2", "--moe-ffn-size", "16",
                            "--out", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    kept = json.loads((tmp_path / "p" / "minitron.json").read_text())["result"]["indices"]
    top2 = sorted(torch.argsort(scores["experts"][0], descending=True, stable=True)[:2].tolist())
    assert kept["experts"]["4"] == top2
    for e in top2:
        want = sorted(torch.argsort(scores["moe_ffn"][0][e], descending=True, stable=True)[:16].tolist())
        assert kept["moe_ffn"]["4"][str(e)] == want


def test_unknown_expert_metric_one_line_exit_2_nothing_written(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "scores"
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *ARGS,
                            "--expert-metric", "bogus"])
    assert r.exit_code == 2, r.output
    assert "--expert-metric" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- one pass: no expert computed twice
def test_one_pass_forward_is_transformers_eager_loop_and_its_sums_the_reference():
    model = build_model(CFG)
    e = model.model.layers[MOE].mixer.experts
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 64, generator=g)
    idx = torch.stack([torch.randperm(5, generator=g)[:2] for _ in range(30)])  # expert 5 never chosen
    w = torch.rand(30, 2, generator=g)
    with torch.no_grad():
        want = type(e).forward.__wrapped__(e, x, idx, w)  # transformers' own eager loop
        out, sums = ex.experts_forward_with_sums(x, idx, w, e.up_proj, e.down_proj, e.act_fn)
        ref = ex.expert_sums(x, idx, w, e.up_proj, e.down_proj, e.act_fn)
    assert torch.equal(out, want)
    for k in ref:
        torch.testing.assert_close(sums[k], ref[k], rtol=1e-6, atol=1e-9)
    assert float(sums["routed"][5]) == 0.0 and float(sums["routed"].sum()) == 60


def test_one_pass_gated_sums_equal_the_reference():
    g = torch.Generator().manual_seed(2)
    n, d, f, n_exp = 25, 8, 5, 4
    x, up, down = torch.randn(n, d, generator=g), torch.randn(n_exp, 2 * f, d, generator=g), torch.randn(n_exp, d, f, generator=g)
    idx = torch.stack([torch.randperm(n_exp, generator=g)[:2] for _ in range(n)])
    w = torch.rand(n, 2, generator=g)
    out, sums = ex.experts_forward_with_sums(x, idx, w, up, down, torch.nn.functional.silu, gated=True)
    ref = ex.expert_sums(x, idx, w, up, down, torch.nn.functional.silu, gated=True)
    for k in ref:
        torch.testing.assert_close(sums[k], ref[k], rtol=1e-6, atol=1e-9)
    want = torch.zeros(n, d)
    for t in range(n):
        for p in range(2):
            gate, lin = (up[idx[t, p]] @ x[t]).chunk(2)
            want[t] += w[t, p] * (down[idx[t, p]] @ (torch.nn.functional.silu(gate) * lin))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_scoring_runs_the_experts_once_then_restores_the_models_implementation():
    from minitron.importance.expert_capture import IMPLEMENTATION

    model = build_model(CFG)
    toks = tokens()
    before = model.config._experts_implementation
    with torch.no_grad():
        logits = model(toks, use_cache=False).logits
    seen = set()
    score_tensors(InMemorySource(model), ARCH, toks, agg=Aggregation(), batch_size=3, layer_metric="kl",
                  progress=lambda *_: seen.add(model.config._experts_implementation))
    assert seen == {IMPLEMENTATION}
    assert model.config._experts_implementation == before != IMPLEMENTATION
    with torch.no_grad():
        assert torch.equal(model(toks, use_cache=False).logits, logits)


def test_the_recomputing_hook_fallback_gives_the_same_scores(monkeypatch):
    """Where the experts do not dispatch through transformers' interface (here: as if it were missing),
    the hook recomputes each expert; the scores equal the one-pass path's."""
    from minitron.importance import expert_capture

    model = build_model(CFG)
    toks = tokens()
    fast = score(model, toks)
    monkeypatch.setattr(expert_capture, "_register", lambda: False)
    seen = set()
    slow, _, _ = score_tensors(InMemorySource(model), ARCH, toks, agg=Aggregation(), batch_size=3,
                               layer_metric="cosine",
                               progress=lambda *_: seen.add(model.config._experts_implementation))
    assert expert_capture.IMPLEMENTATION not in seen
    for name in ("experts", "experts_frequency", "experts_output_norm", "moe_ffn", "shared_expert_ffn", "hidden"):
        torch.testing.assert_close(slow[name], fast[name], rtol=1e-5, atol=1e-7)
