"""The synthetic checkpoint writer of the benchmarks, and a streamed prune of its output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from minitron.models.architecture import Architecture
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.prune.apply import prune_model
from minitron.prune.select import Shape, make_plan
from minitron.prune.shard_writer import prune_checkpoint
from minitron.testing import tiny_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_synthetic_checkpoint.py"


@pytest.fixture(scope="module")
def synth():
    spec = importlib.util.spec_from_file_location("make_synthetic_checkpoint", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("prefix", ["backbone.", "model."])
def test_synthetic_checkpoint_is_strict_sharded_and_runs(synth, tmp_path, prefix):
    cfg = tiny_config()
    info = synth.write_synthetic_checkpoint(cfg, tmp_path, max_shard_bytes=100_000, prefix=prefix)
    ckpt = open_checkpoint(tmp_path)  # strict: names and shapes against config.json
    assert info["params"] == Architecture.from_config(cfg).total_params
    assert len(ckpt.shard_files()) == info["shards"] > 1
    assert ckpt.dtype == "BF16" and all(k.startswith((prefix, "lm_head")) for k in ckpt.tensors)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == ckpt.weights_bytes == 2 * info["params"] + 2 * 4  # + 4 router biases
    model = load_model(tmp_path)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]]), use_cache=False).logits).all()


def test_stream_prune_of_a_synthetic_bf16_checkpoint(synth, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    out.mkdir()
    synth.write_synthetic_checkpoint(tiny_config(), src, max_shard_bytes=50_000)
    arch = Architecture.from_path(src)
    plan = make_plan(arch, Shape(hidden_size=40, ffn_size=32, mamba_heads=6, mamba_head_dim=8, kv_heads=1), None, [4])
    prune_checkpoint(open_checkpoint(src), plan, out, max_shard_bytes=40_000)
    (out / "config.json").write_text(json.dumps(plan.target().to_config()))
    got = load_model(out, dtype="bf16").state_dict()
    want = prune_model(load_model(src, dtype="bf16"), plan).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
