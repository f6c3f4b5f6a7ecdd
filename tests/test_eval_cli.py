"""`minitron eval` end to end on tiny models: the JSON contract, --out, the table, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Same architecture and tokenizer as the tiny fixture, other weights."""
    from minitron.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("other") / "student", seed=1)


@pytest.fixture(scope="module")
def other_tokenizer_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a tokenizer trained on another text (same vocabulary size)."""
    from minitron.testing import build_tokenizer

    dst = tmp_path_factory.mktemp("othertok") / "model"
    shutil.copytree(tiny_model_dir, dst)
    for f in dst.glob("tokenizer*"):
        f.unlink()
    build_tokenizer(
        384, corpus="Completely different words: zebra, quartz, fjord, lynx, sphinx, jackdaw. " * 9
    ).save_pretrained(dst)
    return dst


def _err_line(r) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_json_contract_everything_on(tiny_model_dir, other_model, text_file, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", str(tiny_model_dir), str(other_model), "--data", str(text_file), "--seq-len", "32",
            "--samples", "4", "--batch-size", "2", "--teacher", str(tiny_model_dir),
            "--tasks", "minitron_cloze", "--limit", "4",
            "--throughput", "--prompt-len", "8", "--gen-len", "2", "--throughput-runs", "1",
            "--context-length", "1024", "--out", str(out), "--json"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert [m["name"] for m in doc["models"]] == ["model", "student"] and doc["reference"] == "model"
    for m in doc["models"]:
        assert {"name", "path", "params", "loss", "perplexity", "kl", "tasks", "memory", "throughput"} <= set(
            m
        )
        assert m["params"] > 0
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
        assert 0.0 <= m["tasks"]["minitron_cloze"]["acc"] <= 1.0
        assert {
            "context_length",
            "weights_bytes",
            "kv_cache_bytes",
            "mamba_state_bytes",
            "total_bytes",
        } <= set(m["memory"])
        assert m["memory"]["context_length"] == 1024
        tp = m["throughput"]
        assert tp["prefill_tokens_per_second"] > 0 and tp["decode_tokens_per_second"] > 0
    ref, student = doc["models"]
    assert ref["kl"] == pytest.approx(0.0, abs=1e-6)  # the teacher itself
    assert student["kl"] > 0
    assert student["relative"]["loss"] == pytest.approx(student["loss"] - ref["loss"])
    assert student["relative"]["params"] == pytest.approx(1.0)
    s = doc["settings"]
    assert s["blocks"] == 4 and s["seq_len"] == 32 and s["tokens_per_model"] == 4 * 31
    saved = json.loads((out / "eval.json").read_text())
    assert saved["models"] == doc["models"]
    assert "versions" in json.loads((out / "minitron.json").read_text())


def test_table_output(tiny_model_dir, other_model, text_file):
    r = runner.invoke(app, ["eval", str(tiny_model_dir), str(other_model), "--data", str(text_file),
                            "--seq-len", "32", "--samples", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "reference: model" in r.stdout and "student" in r.stdout and "perplexity" in r.stdout
    assert "(1.00x)" in r.stdout  # relative params of the second row


def test_perplexity_matches_library(tiny_model_dir, text_file):
    """The CLI's figure is the library's figure on the same blocks (text tokenised without special tokens)."""
    from minitron.data import load_blocks
    from minitron.evaluate.perplexity import score_blocks
    from minitron.models.checkpoint import load_model, load_tokenizer

    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", str(text_file), "--seq-len", "16",
                            "--samples", "3", "--dtype", "fp32", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["models"][0]
    tok = load_tokenizer(tiny_model_dir)
    blocks = load_blocks([text_file], tok, seq_len=16, samples=3, sep_eos=False)
    assert tok.bos_token_id not in blocks and tok.eos_token_id not in blocks
    ref = score_blocks(load_model(tiny_model_dir), blocks)
    assert got["loss"] == pytest.approx(ref.loss, rel=1e-6) and got["kl"] is None


@pytest.mark.parametrize(
    "extra, flag",
    [
        # a name that is neither local nor lm-eval's: the message points at --include-path (missing)
        (
            ["--tasks", "my_local_task_xyz"],
            "--tasks: unknown task(s): my_local_task_xyz; for local task YAMLs give --include-path",
        ),
        (
            ["--tasks", "minitron_cloze", "--include-path", "/nonexistent/tasks"],
            "--include-path: no such directory",
        ),
        (["--teacher", "{model}"], "--teacher: KL to the teacher is measured on --data"),
        (["--data", "/nonexistent.txt"], "--data: no such file"),
        (["--data", "{text}", "--seq-len", "1"], "--seq-len"),
        (["--throughput", "--gen-len", "0"], "--gen-len"),
        (["--dtype", "fp8"], "--dtype"),
        (["--limit", "5"], "--tasks"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_model_dir, text_file, extra, flag):
    extra = [e.format(model=tiny_model_dir, text=text_file) for e in extra]
    r = runner.invoke(app, ["eval", str(tiny_model_dir), *extra])
    assert r.exit_code == 2, r.output
    assert flag in _err_line(r)


def test_teacher_with_another_tokenizer(tiny_model_dir, other_tokenizer_model, text_file):
    r = runner.invoke(
        app, ["eval", str(tiny_model_dir), "--data", str(text_file), "--teacher", str(other_tokenizer_model)]
    )
    assert r.exit_code == 2 and "--teacher: " in _err_line(r) and "tokenizer" in _err_line(r)


def test_models_with_different_tokenizers_on_data(tiny_model_dir, other_tokenizer_model, text_file):
    r = runner.invoke(
        app, ["eval", str(tiny_model_dir), str(other_tokenizer_model), "--data", str(text_file)]
    )
    assert r.exit_code == 2 and "--data: " in _err_line(r) and "another tokenizer" in _err_line(r)


def test_existing_out_file_is_refused_and_kept(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text("keep me")
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", str(text_file), "--out", str(out)])
    assert r.exit_code == 2 and "--out" in _err_line(r) and "--overwrite" in _err_line(r)
    assert (out / "eval.json").read_text() == "keep me"
    f = tmp_path / "a-file"
    f.write_text("keep me too")
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", str(text_file), "--out", str(f), "--overwrite"])
    assert r.exit_code == 2 and "not a directory" in _err_line(r) and f.read_text() == "keep me too"


def test_help_documents_perplexity():
    r = runner.invoke(app, ["eval", "--help"])
    assert r.exit_code == 0
    for needle in ("Examples", "minitron eval", "non-overlapping", "exp(loss)", "--include-path", "--json"):
        assert needle in r.stdout, needle


def test_built_task_through_include_path(tiny_model_dir, tmp_path):
    """A task built from another text with a custom name, found through --include-path, run offline."""
    from minitron.evaluate.local_task import SOURCE_TEXT, build_local_task

    build_local_task(SOURCE_TEXT, tmp_path / "tasks", n=12, name="heldout_cloze", seed=1)
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--tasks", "heldout_cloze,minitron_cloze",
                            "--include-path", str(tmp_path / "tasks"), "--limit", "3", "--num-fewshot", "1",
                            "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    tasks = json.loads(r.stdout)["models"][0]["tasks"]
    assert tasks["heldout_cloze"]["samples"] == 3 and tasks["minitron_cloze"]["samples"] == 3
    assert json.loads(r.stdout)["settings"]["num_fewshot"] == 1
