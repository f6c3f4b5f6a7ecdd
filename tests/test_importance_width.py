"""Width formulas and aggregation on hand-made tensors, against direct loops over units."""

from __future__ import annotations

import math

import pytest
import torch
from importance_helpers import naive_aggregate

from minitron.errors import InputError
from minitron.importance import width
from minitron.importance.aggregate import Aggregation, aggregate, batch_partial, finalize_batch, reduce_seq
from minitron.importance.summary import gini, least_important_layers, top_share

AGGS = [Aggregation(s, b) for s in ("mean", "l2") for b in ("mean", "l2")]


@pytest.mark.parametrize("agg", AGGS, ids=str)
def test_aggregate_matches_naive_loop(agg):
    g = torch.Generator().manual_seed(0)
    v = torch.rand(5, 7, 6, generator=g)
    assert torch.allclose(aggregate(v, agg), naive_aggregate(v, agg), atol=1e-6)


@pytest.mark.parametrize("agg", AGGS, ids=str)
def test_batches_add_up_to_the_whole(agg):
    """Partial sums of split batches (as across micro-batches or torchrun ranks) equal one batch."""
    v = torch.rand(6, 4, 3, generator=torch.Generator().manual_seed(1))
    parts = sum(batch_partial(reduce_seq(v[s : s + 2], agg.seq), agg.batch) for s in (0, 2, 4))
    assert torch.allclose(finalize_batch(parts, 6, agg.batch), aggregate(v, agg), atol=1e-12)


def test_aggregation_parse():
    assert Aggregation.parse("mean,l2") == Aggregation("mean", "l2")
    assert Aggregation.parse(" L2 , Mean ") == Aggregation("l2", "mean")
    assert str(Aggregation.parse("l2,l2")) == "l2,l2"
    for bad in ("mean", "max,l2", "mean,l2,mean", ""):
        with pytest.raises(InputError, match="--aggregation"):
            Aggregation.parse(bad)


def test_channel_and_head_values_match_loops():
    a = torch.randn(2, 3, 4 * 5, generator=torch.Generator().manual_seed(2))
    ch = width.channel_values(a)
    hv = width.head_values(a, 4)
    for b in range(2):
        for t in range(3):
            for h in range(4):
                ref = math.sqrt(sum(float(a[b, t, h * 5 + d]) ** 2 for d in range(5)))
                assert abs(float(hv[b, t, h]) - ref) < 1e-5
            for c in range(20):
                assert float(ch[b, t, c]) == abs(float(a[b, t, c]))


def test_kv_scores_sum_their_query_heads():
    heads = torch.arange(16.0).view(2, 8)  # 2 layers, 8 query heads, 2 KV heads -> 4 per group
    kv = width.kv_scores(heads, 2)
    for layer in range(2):
        for g in range(2):
            assert float(kv[layer, g]) == sum(float(heads[layer, q]) for q in range(8) if q // 4 == g)


def test_mamba_x_slice_is_the_second_block_of_in_proj():
    inner = 6
    proj = torch.arange(2 * inner + 5.0).view(1, 1, -1)  # z | x | (B, C, dt)
    assert width.mamba_x_slice(proj, inner).flatten().tolist() == list(range(inner, 2 * inner))


def test_mamba_output_weight_norms_loop_and_zeroed_columns():
    g = torch.Generator().manual_seed(3)
    n_heads, p, hidden = 4, 3, 5
    w = torch.randn(hidden, n_heads * p, generator=g)
    nw = torch.rand(n_heads * p, generator=g) + 0.5
    w[:, 2 * p : 3 * p] = 0  # head 2's out_proj columns
    norms = width.mamba_output_weight_norms(w, nw, n_heads)
    for h in range(n_heads):
        ref = math.sqrt(sum(float(w[o, c] * nw[c]) ** 2 for o in range(hidden) for c in range(h * p, (h + 1) * p)))
        assert abs(float(norms[h]) - ref) < 1e-5
    assert float(norms[2]) == 0.0
    scores = width.mamba_head_scores(torch.rand(n_heads, dtype=torch.float64) + 1, norms)
    assert int(scores.argmin()) == 2 and float(scores[2]) == 0.0


def test_mamba_head_dim_is_l2_over_heads():
    n_heads, p = 3, 4
    ch = torch.rand(n_heads * p, dtype=torch.float64)
    hd = width.mamba_head_dim_scores(ch, n_heads)
    for j in range(p):
        assert abs(float(hd[j]) - math.sqrt(sum(float(ch[h * p + j]) ** 2 for h in range(n_heads)))) < 1e-12


def test_concentration_measures():
    assert gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.tensor([0.0, 0, 0, 1])) == pytest.approx(0.75)
    assert top_share(torch.ones(10)) == pytest.approx(0.1)
    assert top_share(torch.tensor([9.0] + [1.0 / 9] * 9)) == pytest.approx(0.9)
    rows = least_important_layers(torch.tensor([3.0, 1.0, 2.0]), "M-*", n=2)
    assert [r["layer"] for r in rows] == [1, 2] and rows[0]["type"] == "mlp"
