"""Split-half stability of the rankings: Spearman against a naive reference, halves that are the
even and odd micro-batches' own scores, full scores unchanged, and the figure in `score`'s output."""

from __future__ import annotations

import json

import pytest
import torch

from minitron.importance.aggregate import Aggregation
from minitron.importance.engine import InMemorySource
from minitron.importance.stability import ranks, spearman, split_half
from minitron.models.architecture import Architecture
from minitron.recipes.score import score_tensors
from minitron.testing import build_model, tiny_config

ARCH = Architecture.from_config(tiny_config())


def naive_ranks(x: list[float]) -> list[float]:
    """Average 1-based ranks by counting: below + (equal + 1) / 2."""
    return [sum(y < v for y in x) + (sum(y == v for y in x) + 1) / 2 for v in x]


def naive_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = naive_ranks(a), naive_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


@pytest.mark.parametrize("seed", range(4))
def test_spearman_and_ranks_equal_a_naive_reference_ties_included(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 6, (17,), generator=g).double()  # many ties
    b = torch.randn(17, generator=g).double()
    assert ranks(a).tolist() == naive_ranks(a.tolist())
    assert spearman(a, b) == pytest.approx(naive_spearman(a.tolist(), b.tolist()), abs=1e-12)
    assert spearman(b, b) == pytest.approx(1.0) and spearman(b, -b) == pytest.approx(-1.0)
    assert spearman(torch.ones(5), b[:5]) is None  # a constant score ranks nothing


def test_split_half_averages_rows_and_skips_axes_of_two_units():
    even = {"ffn": torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4]]), "kv_heads": torch.tensor([[1.0, 2]]),
            "hidden": torch.tensor([3.0, 1, 2])}
    odd = {"ffn": torch.tensor([[1.0, 2, 3, 4], [4, 3, 2, 1]]), "kv_heads": torch.tensor([[2.0, 1]]),
           "hidden": torch.tensor([3.0, 1, 2])}
    assert split_half(even, odd) == {"hidden": 1.0, "ffn": 0.0}


def _score(toks, batch_size, stability=None):
    out, _, _ = score_tensors(InMemorySource(build_model()), ARCH, toks, agg=Aggregation(), batch_size=batch_size,
                              layer_metric="cosine", stability=stability)
    return out


def test_halves_are_the_even_and_odd_batches_scored_alone_and_the_full_scores_do_not_change():
    toks = torch.randint(3, 384, (12, 16), generator=torch.Generator().manual_seed(0))
    st: dict = {}
    full = _score(toks, 3, st)
    plain = _score(toks, 3)
    for k in full:
        assert torch.equal(full[k], plain[k]), k  # byte-identical with the halves kept apart
    even = _score(torch.cat([toks[i : i + 3] for i in (0, 6)]), 3)  # micro-batches 0 and 2
    odd = _score(torch.cat([toks[i : i + 3] for i in (3, 9)]), 3)  # micro-batches 1 and 3
    assert st == split_half(even, odd)
    assert set(st) >= {"hidden", "ffn", "mamba_heads"} and all(-1 <= r <= 1 for r in st.values())
    one: dict = {}
    _score(toks[:3], 3, one)
    assert one == {}  # a single micro-batch has no second half


def test_score_reports_stability_in_json_and_minitron_json(tmp_path, tiny_model_dir, text_file):
    from typer.testing import CliRunner

    from minitron.cli.main import app

    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--samples", "8",
                                 "--seq-len", "32", "--batch-size", "2", "--device", "cpu", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc["stability"]) >= {"hidden", "ffn"}
    assert json.loads((out / "minitron.json").read_text())["result"]["stability"] == doc["stability"]
    r = CliRunner().invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--samples", "8",
                                 "--seq-len", "32", "--batch-size", "2", "--device", "cpu", "--out",
                                 str(tmp_path / "t")])
    assert r.exit_code == 0 and "ranking stability (Spearman, even vs odd batches): hidden" in r.stdout


