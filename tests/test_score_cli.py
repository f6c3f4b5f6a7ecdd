"""`minitron score` end to end: output schema, provenance, JSON purity, determinism, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.data import data_fingerprints
from minitron.importance.scores import Scores, expected_shapes
from minitron.io import model_fingerprint
from minitron.models.architecture import Architecture

runner = CliRunner()
ARGS = ["--samples", "6", "--seq-len", "32", "--batch-size", "4", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, ["score", *map(str, args)])


@pytest.fixture(scope="module")
def scored(tiny_model_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "scores"
    r = invoke(tiny_model_dir, "--data", text_file, "--out", out, *ARGS, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)  # stdout is exactly one JSON document


def test_outputs_follow_the_schema(scored, tiny_model_dir):
    out, doc = scored
    assert sorted(p.name for p in out.iterdir()) == ["compensation.safetensors", "importance.png", "minitron.json",
                                                     "scores.safetensors"]
    assert doc["compensation"].startswith("on (") and "compensation.safetensors" in doc["files"]
    arch = Architecture.from_path(tiny_model_dir)
    with safe_open(str(out / "scores.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.metadata()["metric"] == "kl"
    assert names == set(expected_shapes(arch)) | {"layers_mse", "layers_loss", "layers_cosine",
                                                  "experts_frequency", "experts_output_norm", "hidden_covariance"}
    scores = Scores.load(out)
    assert tuple(scores["hidden_covariance"].shape) == (arch.hidden_size, arch.hidden_size)
    scores.validate(arch)  # shapes, finite, non-negative
    for name, shape in expected_shapes(arch).items():
        assert tuple(scores[name].shape) == shape and scores[name].dtype == torch.float32
    assert scores.fingerprint == model_fingerprint(tiny_model_dir)
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["samples"] == 6 and doc["seq_len"] == 32 and doc["metric"] == "kl" and doc["streaming"] is False
    assert len(doc["least_important_layers"]) == 5
    assert set(doc["concentration"]) >= {"hidden", "ffn", "attention_heads", "mamba_heads", "layers"}


def test_provenance(scored, tiny_model_dir, text_file):
    out, _ = scored
    prov = json.loads((out / "minitron.json").read_text())
    assert prov["command"] == "score"
    assert prov["inputs"]["model_fingerprint"] == model_fingerprint(tiny_model_dir)
    assert prov["inputs"]["data"] == data_fingerprints([str(text_file)])
    assert prov["options"]["samples"] == 6 and prov["options"]["seq_len"] == 32
    assert prov["options"]["layer_metric"] == "kl" and prov["options"]["aggregation"] == "mean,l2"
    assert {"minitron", "torch", "transformers"} <= set(prov["versions"])


def test_same_inputs_give_byte_identical_scores(scored, tiny_model_dir, text_file, tmp_path):
    out, _ = scored
    r = invoke(tiny_model_dir, "--data", text_file, "--out", tmp_path / "again", *ARGS)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again" / "scores.safetensors").read_bytes() == (out / "scores.safetensors").read_bytes()
    assert "least important layers" in r.stdout and "concentration" in r.stdout


def test_another_seed_picks_other_samples(tiny_model_dir, text_file, tmp_path, scored):
    out, _ = scored
    r = invoke(tiny_model_dir, "--data", text_file, "--out", tmp_path / "s1", *ARGS, "--seed", "1",
               "--layer-metric", "cosine", "--aggregation", "l2,mean")
    assert r.exit_code == 0, r.output
    a, b = Scores.load(out), Scores.load(tmp_path / "s1")
    assert b.metric == "cosine" and b["layers"].shape == (9,)
    assert "layers_kl" not in b.tensors and not torch.allclose(a["hidden"], b["hidden"])


def test_overwrite(scored, tiny_model_dir, text_file, tmp_path):
    dest = tmp_path / "o"
    dest.mkdir()
    (dest / "old.txt").write_text("x")
    r = invoke(tiny_model_dir, "--data", text_file, "--out", dest, *ARGS, "--layer-metric", "cosine")
    assert r.exit_code == 2 and "--out" in r.stderr and "--overwrite" in r.stderr
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    r = invoke(tiny_model_dir, "--data", text_file, "--out", dest, *ARGS, "--layer-metric", "cosine", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (dest / "scores.safetensors").is_file() and not (dest / "old.txt").exists()


def _bad_data(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nope.txt"
    p = tmp_path / f"{kind}.txt"
    if kind == "empty":
        p.write_text("")
    elif kind == "binary":
        p.write_bytes(b"\x00\x01\x02garbage\x00" * 100)
    elif kind == "short":
        p.write_text("just a few words")
    return p


@pytest.mark.parametrize("kind", ["missing", "empty", "binary", "short"])
def test_bad_data_is_one_line_exit_2_nothing_written(tiny_model_dir, tmp_path, kind):
    out = tmp_path / "out"
    r = invoke(tiny_model_dir, "--data", _bad_data(tmp_path, kind), "--out", out, *ARGS)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: --data") and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    if kind == "short":
        assert "gives 0 block(s)" in r.stderr


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--samples", "0"], "--samples"),
        (["--seq-len", "100000"], "--seq-len"),
        (["--batch-size", "0"], "--batch-size"),
        (["--layer-metric", "nope"], "--layer-metric"),
        (["--aggregation", "max"], "--aggregation"),
        (["--dtype", "int3"], "--dtype"),
        (["--samples", "100000"], "--data"),
    ],
)
def test_bad_options_exit_2(tiny_model_dir, text_file, tmp_path, extra, flag):
    out = tmp_path / "out"
    r = invoke(tiny_model_dir, "--data", text_file, "--out", out, *ARGS, *extra)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"error: {flag}") and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("damage", ["no-config", "bad-json", "truncated-shard", "no-weights"])
def test_broken_model_dir_exit_2(tiny_model_dir, text_file, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    if damage == "no-config":
        (model / "config.json").unlink()
    elif damage == "bad-json":
        (model / "config.json").write_text("{not json")
    elif damage == "truncated-shard":
        shard = sorted(model.glob("*.safetensors"))[0]
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "no-weights":
        for f in model.glob("*.safetensors*"):
            f.unlink()
    out = tmp_path / "out"
    r = invoke(model, "--data", text_file, "--out", out, *ARGS)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_streaming_flag(scored, tiny_model_dir, text_file, tmp_path):
    out, _ = scored
    r = invoke(tiny_model_dir, "--data", text_file, "--out", tmp_path / "st", *ARGS, "--streaming",
               "--layer-metric", "cosine", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["streaming"] is True and doc["bytes_read"] > 0
    a, b = Scores.load(out), Scores.load(tmp_path / "st")
    assert torch.allclose(a["layers_cosine"], b["layers"], atol=1e-6)
    assert torch.allclose(a["mamba_heads"], b["mamba_heads"], atol=1e-6)


def test_help_marks_each_width_axis_default():
    # the flag's help was once written out by hand and kept the pre-0.2 Mamba defaults (x_out, x)
    from minitron.importance.signals import WIDTH_METRICS

    r = invoke("--help")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())  # the panel's borders and wrapping undone
    for axis, (default, names) in WIDTH_METRICS.items():
        assert f"{axis}: " + ", ".join(f"{n} (default)" if n == default else n for n in names) in text, axis
    assert "gated_out (default)" in text and "x_out (default)" not in text
