"""`minitron teacher-logits` and `distill --teacher-logits`: format, exactness, bad input, resume, DDP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student, run_cli, subprocess_env, weights
from typer.testing import CliRunner

from minitron.cli.main import app


@pytest.fixture(scope="module")
def student_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_pruned_student(tiny_model_dir, tmp_path_factory.mktemp("student") / "pruned")


def _cache_args(teacher, data, out, *extra):
    return ["teacher-logits", str(teacher), "--data", str(data), "--out", str(out), "--seq-len", "32", *extra]


def _run(args):
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def cache16(tiny_model_dir, text_file, tmp_path_factory) -> Path:
    """Top-16 cache of the text file, in small shards (several files), with an eval split."""
    out = tmp_path_factory.mktemp("cache") / "c16"
    r = _run(_cache_args(tiny_model_dir, text_file, out, "--top-k", "16", "--max-shard-size", "100KB",
                         "--eval-data", str(text_file), "--eval-samples", "4", "--json"))  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def test_cache_format_and_contents(tiny_model_dir, text_file, cache16):
    from minitron.data import load_blocks
    from minitron.distill.logit_cache import TeacherLogits
    from minitron.losses.topk import teacher_bins
    from minitron.models.checkpoint import load_model, load_tokenizer

    index = json.loads((cache16 / "index.json").read_text())
    assert index["k"] == 16 and index["tail"] and index["seq_len"] == 32 and index["vocab_size"] == 384
    assert index["bytes_per_token"] == 16 * 4 + 17 * 4  # int32 ids + fp32 log-probs of 16 tokens and the tail
    shards = index["splits"]["train"]["shards"]
    assert len(shards) > 1 and index["splits"]["eval"]["blocks"] == 4
    prov = json.loads((cache16 / "minitron.json").read_text())
    assert prov["command"] == "teacher-logits" and prov["result"]["teacher"] == index["teacher"]
    cache = TeacherLogits(cache16)
    blocks = load_blocks([text_file], load_tokenizer(tiny_model_dir), seq_len=32)
    assert cache.splits["train"].blocks == blocks.shape[0]
    idx = [0, shards[1]["start"], blocks.shape[0] - 1]  # across shards
    ids, log_p = cache.read("train", idx)
    assert ids.shape == (3, 32, 16) and log_p.shape == (3, 32, 17)
    with torch.no_grad():
        logits = load_model(tiny_model_dir)(input_ids=blocks[idx], use_cache=False).logits
    want_ids, want = teacher_bins(logits.reshape(-1, 384), 1.0, 16)
    assert torch.equal(ids.reshape(-1, 16), want_ids)
    torch.testing.assert_close(log_p.reshape(-1, 17), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3, 32))


def test_cached_at_full_vocabulary_equals_the_resident_teacher(tiny_model_dir, student_dir, text_file, tmp_path):
    """k = V: the cached loss is the full KL, so training on the cache gives the resident run's weights."""
    cache = tmp_path / "full"
    assert _run(_cache_args(tiny_model_dir, text_file, cache, "--top-k", "384")).exit_code == 0
    assert not json.loads((cache / "index.json").read_text())["tail"]
    args = ["--steps", "3", "--global-batch-size", "4", "--micro-batch-size", "2", "--json"]
    r1 = _run(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "online", *args))
    r2 = _run(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "cached", *args, "--teacher-logits", str(cache)))
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    d1, d2 = json.loads(r1.stdout), json.loads(r2.stdout)
    assert d2["train"]["loss"] == pytest.approx(d1["train"]["loss"], rel=1e-4)
    assert d2["final_eval"]["kl"] == pytest.approx(d1["final_eval"]["kl"], rel=1e-3)
    a, b = weights(tmp_path / "online"), weights(tmp_path / "cached")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    prov = json.loads((tmp_path / "cached" / "minitron.json").read_text())
    assert prov["inputs"]["teacher_logits"]["k"] == 384


def test_cached_top_k_equals_online_top_k(tiny_model_dir, student_dir, text_file, cache16, tmp_path):
    """Same definition online and cached: --top-k 16 with the teacher resident == the top-16 cache."""
    args = ["--steps", "2", "--top-k", "16", "--json", "--eval-data", str(text_file), "--eval-samples", "4"]
    r1 = _run(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "online", *args))
    r2 = _run(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "cached", *args, "--teacher-logits",
                        str(cache16)))  # fmt: skip
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    d1, d2 = json.loads(r1.stdout), json.loads(r2.stdout)
    assert d2["train"]["loss"] == pytest.approx(d1["train"]["loss"], rel=1e-4)
    assert d2["final_eval"]["kl_support"] == "top-16+tail" and d2["eval_source"] == "eval-data"
    a, b = weights(tmp_path / "online"), weights(tmp_path / "cached")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def _other_tokenizer_teacher(teacher, tmp_path):
    from minitron.testing import build_tokenizer

    d = tmp_path / "othertok"
    shutil.copytree(teacher, d)
    build_tokenizer(corpus="entirely different words: zebra quartz jukebox vortex " * 20).save_pretrained(d)
    return d


@pytest.mark.parametrize("case", ["other_teacher", "other_tokenizer", "seq_len", "truncated", "too_few", "other_data",
                                  "temperature", "not_a_cache"])  # fmt: skip
def test_mismatched_cache_is_refused(case, tiny_model_dir, student_dir, text_file, cache16, tmp_path):
    from minitron.testing import make_tiny_model_dir

    cache, data, extra = cache16, text_file, ["--steps", "2"]
    if case == "other_teacher":
        other = make_tiny_model_dir(tmp_path / "t2", seed=7)
        cache = tmp_path / "c"
        assert _run(_cache_args(other, text_file, cache, "--top-k", "16")).exit_code == 0
    elif case == "other_tokenizer":
        cache = tmp_path / "c"
        r = _run(_cache_args(_other_tokenizer_teacher(tiny_model_dir, tmp_path), text_file, cache, "--top-k", "16"))
        assert r.exit_code == 0, r.output
    elif case == "seq_len":
        extra += ["--seq-len", "16"]  # the last --seq-len wins
    elif case == "truncated":
        cache = tmp_path / "c"
        shutil.copytree(cache16, cache)
        shard = cache / json.loads((cache / "index.json").read_text())["splits"]["train"]["shards"][1]["file"]
        shard.write_bytes(shard.read_bytes()[:-100])
    elif case == "too_few":
        extra = ["--steps", "1000"]
    elif case == "other_data":
        data = tmp_path / "other.txt"
        data.write_text(text_file.read_text() + " more words")
    elif case == "temperature":
        extra += ["--temperature", "2"]
    elif case == "not_a_cache":
        cache = tmp_path / "c"
        cache.mkdir()
    out = tmp_path / "out"
    r = _run(base_args(tiny_model_dir, student_dir, data, out, *extra, "--teacher-logits", str(cache)))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --teacher-logits:"), r.stderr
    if case == "too_few":
        assert "it covers 42 steps" in lines[0], lines[0]  # 170 blocks / 4 per step
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_teacher_logits_bad_input(tiny_model_dir, text_file, tmp_path):
    for extra, flag in ((["--top-k", "0"], "--top-k"), (["--logprob-dtype", "int8"], "--logprob-dtype"),
                        (["--max-shard-size", "big"], "--max-shard-size")):  # fmt: skip
        r = _run(_cache_args(tiny_model_dir, text_file, tmp_path / "c", *extra))
        assert r.exit_code == 2 and r.stderr.strip().startswith(f"error: {flag}:"), r.output
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c*"))


def test_cached_run_sigkill_then_resume_equals_uninterrupted(tiny_model_dir, student_dir, text_file, cache16, tmp_path):
    steps = ["--steps", "10", "--save-every", "2", "--keep-last", "2", "--eval-every", "5", "--warmup-steps", "2",
             "--teacher-logits", str(cache16), "--json"]  # fmt: skip
    ref = tmp_path / "ref"
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, ref, *steps))
    assert r.returncode == 0, r.stderr
    out, part = tmp_path / "run", tmp_path / "run.partial"
    cmd = [sys.executable, "-m", "minitron", *base_args(tiny_model_dir, student_dir, text_file, out, *steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    ckpt = part / "checkpoints" / "step-00000004.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    r = run_cli(base_args(tiny_model_dir, student_dir, text_file, out, *steps))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] in (4, 6, 8)
    a, b = weights(ref), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_cached_ddp_two_processes_equal_one(fsdp, tiny_model_dir, student_dir, text_file, cache16, tmp_path):
    args = ["--steps", "3", "--global-batch-size", "4", "--micro-batch-size", "2", "--teacher-logits", str(cache16),
            "--json"]  # fmt: skip
    r1 = run_cli(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "one", *args))
    r2 = run_cli(base_args(tiny_model_dir, student_dir, text_file, tmp_path / "two", *args, *(["--fsdp"] if fsdp else [])),
                 torchrun=2)  # fmt: skip
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr[-3000:]
    d1, d2 = json.loads(r1.stdout), json.loads(r2.stdout)
    assert d2["world_size"] == 2 and d2["train"]["loss"] == pytest.approx(d1["train"]["loss"], rel=1e-5)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
