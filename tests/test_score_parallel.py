"""The layer-streamed and torchrun paths give the in-memory path's scores."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minitron.errors import InputError
from minitron.importance.scores import Scores
from minitron.recipes import score as score_run
from minitron.recipes.score import ScoreOptions, prepare, score_model

OPTS = {"samples": 5, "seq_len": 32, "batch_size": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def in_memory(tiny_model_dir, text_file):
    return score_model(tiny_model_dir, [text_file], ScoreOptions(**OPTS, streaming=False))


def assert_same(a: dict, b: dict, tol=1e-5):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.allclose(a[k], b[k], rtol=tol, atol=tol), (k, (a[k] - b[k]).abs().max())


def test_layer_streamed_equals_in_memory(in_memory, tiny_model_dir, text_file):
    streamed = score_model(tiny_model_dir, [text_file], ScoreOptions(**OPTS, streaming=True))
    assert streamed.info["streaming"] is True and in_memory.info["streaming"] is False
    # Every weight (MoE experts stacked from per-expert tensors included) was read from the shards once per use.
    assert streamed.info["bytes_read"] > 0
    assert_same(in_memory.scores.tensors, streamed.scores.tensors, tol=1e-6)


def test_streaming_is_chosen_when_the_weights_do_not_fit(tiny_model_dir, text_file, monkeypatch):
    p = prepare(tiny_model_dir, [text_file], ScoreOptions(**OPTS))
    assert p.streaming is False  # a tiny model fits
    weights = p.arch.total_params * 4
    monkeypatch.setattr(score_run, "available_memory", lambda device: int(weights * 1.2))
    assert prepare(tiny_model_dir, [text_file], ScoreOptions(**OPTS)).streaming is True
    assert prepare(tiny_model_dir, [text_file], ScoreOptions(**OPTS, streaming=False)).streaming is False
    # Activations that cannot fit either: a one-line error naming the flag, before any work.
    monkeypatch.setattr(score_run, "available_memory", lambda device: 1000)
    with pytest.raises(InputError, match="--samples.*layer-streamed"):
        prepare(tiny_model_dir, [text_file], ScoreOptions(**OPTS))


def test_torchrun_two_processes_equal_one(in_memory, tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # a free port, so parallel test runs don't collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), "-m", "minitron", "score",
           str(tiny_model_dir), "--data", str(text_file), "--out", str(out), "--no-streaming", "--json",
           *[f"--{k.replace('_', '-')}={v}" for k, v in OPTS.items()]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"world_size": 2') == 1  # only rank 0 reports (and writes)
    got = Scores.load(out)
    # The compensation statistics go to their own file, all-reduced like the scores.
    scores = {k: v for k, v in in_memory.scores.tensors.items() if not k.startswith("gram.")}
    grams = {k: v for k, v in in_memory.scores.tensors.items() if k.startswith("gram.")}
    assert_same(scores, got.tensors, tol=1e-5)
    assert grams and got.grams_file is not None
    assert_same(grams, load_file(str(got.grams_file)), tol=1e-5)


def test_layer_streamed_bf16_equals_in_memory_bf16(tiny_model_dir, text_file):
    """In bf16 too (streaming casts each tensor as `from_pretrained` does)."""
    opts = {**OPTS, "samples": 2, "dtype": "bf16", "layer_metric": "cosine"}
    a = score_model(tiny_model_dir, [text_file], ScoreOptions(**opts, streaming=False))
    b = score_model(tiny_model_dir, [text_file], ScoreOptions(**opts, streaming=True))
    assert_same(a.scores.tensors, b.scores.tensors, tol=1e-6)
