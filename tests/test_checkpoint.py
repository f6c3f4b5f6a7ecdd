"""Checkpoint reading: headers only, strict key/shape checks, loading with transformers."""

from __future__ import annotations

import json

import pytest
import torch

from minitron.errors import CheckpointError, InputError
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.models.safetensors_io import read_header as read_safetensors_header


def test_open_reads_headers_and_checks(tiny_model_dir):
    ckpt = open_checkpoint(tiny_model_dir)
    assert ckpt.has_weights and len(ckpt.shard_files()) > 1
    assert ckpt.prefix == "backbone."
    assert ckpt.weights_bytes == sum(e.nbytes for e in ckpt.tensors.values())
    assert ckpt.dtype == "F32"
    model = load_model(tiny_model_dir)
    assert ckpt.arch.total_params == sum(p.numel() for p in model.parameters())


def test_config_only_directory_is_fine(tmp_path):
    from minitron.testing import tiny_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_config()))
    ckpt = open_checkpoint(tmp_path)
    assert not ckpt.has_weights
    with pytest.raises(InputError, match="no \\*.safetensors"):
        open_checkpoint(tmp_path, require_weights=True)


def test_truncated_shard_is_reported(tiny_model_copy):
    shard = sorted(tiny_model_copy.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(tiny_model_copy)


def test_garbage_shard_is_reported(tiny_model_copy):
    shard = sorted(tiny_model_copy.glob("*.safetensors"))[0]
    shard.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_safetensors_header(shard)


def test_shape_disagreeing_with_config_is_reported(tiny_model_copy):
    cfg = json.loads((tiny_model_copy / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (tiny_model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"up_proj.weight has shape \[96, 64\] but config.json implies \[80, 64\]"):
        open_checkpoint(tiny_model_copy)


def test_missing_tensor_is_reported(tiny_model_copy):
    from safetensors.torch import load_file, save_file

    index = json.loads((tiny_model_copy / "model.safetensors.index.json").read_text())
    key = "backbone.layers.1.mixer.up_proj.weight"
    shard = tiny_model_copy / index["weight_map"][key]
    tensors = load_file(str(shard))
    del tensors[key]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing tensors: layers.1.mixer.up_proj.weight"):
        open_checkpoint(tiny_model_copy)


def test_index_naming_missing_shard(tiny_model_copy):
    sorted(tiny_model_copy.glob("*.safetensors"))[-1].unlink()
    with pytest.raises(CheckpointError, match="missing shard"):
        open_checkpoint(tiny_model_copy)


def test_loaded_model_runs(tiny_model_dir):
    model = load_model(tiny_model_dir, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert model(torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, 384)
