"""Layer metrics: pure functions against plain formulas; the prefix-reusing engine against N+1 full passes."""

from __future__ import annotations

import pytest
import torch

from minitron.importance.depth import cosine_distance, mse_per_token
from minitron.importance.engine import layer_scores
from minitron.losses.reference import kl_per_token, nll_per_token


def test_metric_functions_match_plain_formulas():
    g = torch.Generator().manual_seed(0)
    ref, other = torch.randn(3, 11, generator=g), torch.randn(3, 11, generator=g)
    p, q = ref.softmax(-1), other.softmax(-1)
    assert torch.allclose(kl_per_token(ref, other), (p * (p.log() - q.log())).sum(-1), atol=1e-6)
    assert torch.allclose(kl_per_token(ref, ref), torch.zeros(3), atol=1e-7)
    assert torch.allclose(mse_per_token(ref, other), ((ref - other) ** 2).mean(-1))
    tgt = torch.tensor([1, 4, 10])
    assert torch.allclose(nll_per_token(other, tgt), torch.nn.functional.cross_entropy(other, tgt, reduction="none"))
    x = torch.randn(4, 8, generator=g)
    assert torch.allclose(cosine_distance(x, x), torch.zeros(4), atol=1e-6)
    assert torch.allclose(cosine_distance(x, -x), 2 * torch.ones(4), atol=1e-6)


class _Skipped(torch.nn.Module):
    """Stands in for a removed block in transformers' own forward loop."""

    def __init__(self, block_type):
        super().__init__()
        self.block_type = block_type

    def forward(self, hidden_states, **kwargs):
        return hidden_states


def naive_layer_scores(model, tokens, skip=frozenset()):
    """N+1 full passes of transformers' forward, one block replaced by identity each time."""
    layers = model.model.layers
    originals = list(layers)

    def logits_without(removed):
        for i in removed:
            layers[i] = _Skipped(originals[i].block_type)
        try:
            with torch.no_grad():
                return model(tokens).logits.float()
        finally:
            for i in removed:
                layers[i] = originals[i]

    ref = logits_without(skip)
    ref_nll = nll_per_token(ref[:, :-1], tokens[:, 1:]).mean()
    out = {m: torch.zeros(len(originals)) for m in ("kl", "mse", "loss")}
    for i in range(len(originals)):
        if i in skip:
            continue
        lg = logits_without(skip | {i})
        out["kl"][i] = kl_per_token(ref, lg).mean()
        out["mse"][i] = mse_per_token(ref, lg).mean()
        out["loss"][i] = (nll_per_token(lg[:, :-1], tokens[:, 1:]).mean() - ref_nll).clamp_min(0)
    return out


@pytest.fixture(scope="module")
def model_and_tokens():
    from minitron.testing import build_model

    model = build_model()
    tokens = torch.randint(0, 384, (5, 24), generator=torch.Generator().manual_seed(0))
    return model, tokens


@pytest.mark.parametrize("skip", [frozenset(), frozenset({2, 5})], ids=["none", "skip-2-5"])
def test_layer_scores_equal_n_plus_1_full_passes(model_and_tokens, skip):
    model, tokens = model_and_tokens
    naive = naive_layer_scores(model, tokens, skip)
    for metric in ("kl", "mse", "loss"):
        got = layer_scores(model, tokens, metric=metric, batch_size=2, skip=skip)
        assert got.shape == (9,)
        assert torch.allclose(got, naive[metric], atol=1e-5, rtol=1e-4), metric
        assert all(float(got[i]) == 0.0 for i in skip)


def test_cosine_layer_score_is_one_minus_cos_of_block_in_and_out(model_and_tokens):
    model, tokens = model_and_tokens
    got = layer_scores(model, tokens, metric="cosine", batch_size=3)
    seen = {}
    hooks = [blk.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, (args[0], out)))
             for i, blk in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in hooks:
            h.remove()
    for i in range(9):
        x, y = seen[i]
        ref = 1 - torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()
        assert abs(float(got[i]) - float(ref)) < 1e-5


def test_progress_is_reported(model_and_tokens):
    model, tokens = model_and_tokens
    calls = []
    layer_scores(model, tokens[:2], metric="cosine", batch_size=1, progress=lambda s, d, t: calls.append((d, t)))
    assert calls[-1] == (20, 20)  # 2 micro-batches x (9 layers + head)
