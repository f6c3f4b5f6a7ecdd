"""Throughput measurement: the cache path decodes what a full forward would, and the figures are sane."""

from __future__ import annotations

import pytest
import torch

from minitron.errors import InputError
from minitron.evaluate.throughput import ThroughputSettings, measure, prompt_ids, run_once


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from minitron.models.checkpoint import load_model

    return load_model(tiny_model_dir)


def test_cached_greedy_decode_equals_full_forward_greedy(tiny):
    """The timed loop really uses the model's cache correctly: same tokens as re-running the whole sequence."""
    ids = prompt_ids(ThroughputSettings(prompt_len=10, batch_size=2, seed=3), tiny.config.vocab_size)
    _, _, gen = run_once(tiny, ids, gen_len=6)
    assert gen.shape == (2, 6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = tiny(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen, seq[:, 10:])


def test_measure_reports_positive_rates(tiny):
    s = ThroughputSettings(prompt_len=8, gen_len=4, batch_size=2, runs=2, warmup=1)
    doc = measure(tiny, s, memory_model_bytes=123)
    assert doc["prefill_tokens_per_second"] > 0 and doc["decode_tokens_per_second"] > 0
    assert doc["prefill_tokens_per_second"] == pytest.approx(2 * 8 / doc["prefill_seconds"])
    assert doc["decode_tokens_per_second"] == pytest.approx(2 * 4 / doc["decode_seconds"])
    assert doc["device"] == "cpu" and doc["peak_memory_bytes"] is None and doc["memory_model_bytes"] == 123


def test_same_prompt_for_every_model_and_bad_settings():
    s = ThroughputSettings(prompt_len=5, batch_size=2, seed=1)
    assert torch.equal(prompt_ids(s, 384), prompt_ids(s, 384))
    assert int(prompt_ids(s, 384).min()) >= 3
    with pytest.raises(InputError, match="--gen-len"):
        ThroughputSettings(gen_len=0).validate()
    with pytest.raises(InputError, match="--throughput-batch-size"):
        ThroughputSettings(batch_size=0).validate()
