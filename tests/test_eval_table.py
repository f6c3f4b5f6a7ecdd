"""The comparison table's relative columns (pure) and its rendering."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from minitron.cli.eval_table import render
from minitron.evaluate.table import relative


def _rows():
    return [
        {"name": "teacher", "params": 1000, "loss": 2.0, "perplexity": 7.389, "kl": 0.0,
         "tasks": {"t": {"acc": 0.6, "acc_stderr": 0.05}}, "memory": {"total_bytes": 400, "context_length": 64},
         "throughput": {"prefill_tokens_per_second": 100.0, "decode_tokens_per_second": 10.0}},
        {"name": "pruned", "params": 720, "loss": 2.08, "perplexity": 8.0, "kl": 0.1,
         "tasks": {"t": {"acc": 0.5, "acc_stderr": 0.05}}, "memory": {"total_bytes": 300, "context_length": 64},
         "throughput": {"prefill_tokens_per_second": 150.0, "decode_tokens_per_second": 13.1}},
        {"name": "bare", "params": 500, "loss": None, "perplexity": None, "kl": None, "tasks": {},
         "memory": None, "throughput": None},
    ]  # fmt: skip


def test_relative_ratios_and_differences():
    ref, pruned, bare = relative(_rows())
    assert ref["params"] == 1.0 and ref["loss"] == 0.0
    assert pruned["params"] == pytest.approx(0.72)
    assert pruned["loss"] == pytest.approx(0.08)
    assert pruned["kl"] == pytest.approx(0.1)
    assert pruned["decode_tokens_per_second"] == pytest.approx(1.31)
    assert pruned["prefill_tokens_per_second"] == pytest.approx(1.5)
    assert pruned["memory"] == pytest.approx(0.75)
    assert pruned["tasks"] == {"t": {"acc": pytest.approx(-0.1)}}  # stderr is not compared
    assert bare["loss"] is None and bare["decode_tokens_per_second"] is None and bare["tasks"] == {}


def test_render_shows_every_row_and_relative_figures():
    rows = _rows()
    for r, rel in zip(rows, relative(rows), strict=True):
        r["relative"] = rel
    buf = io.StringIO()
    render({"models": rows, "settings": {"tasks": ["t"]}}, Console(file=buf, width=250))
    text = buf.getvalue()
    for needle in ("teacher", "pruned", "bare", "(0.72x)", "(+0.080)", "(1.31x)", "t acc", "(-0.100)"):
        assert needle in text, needle
