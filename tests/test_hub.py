"""Hub ids wherever a model is read: resolved offline from a Hugging Face cache the test builds in the
cache's own layout (models--org--name/refs, snapshots/<commit>), exactly as huggingface_hub finds it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from distill_helpers import subprocess_env

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / "models--local--tiny-hybrid"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "v1").write_text(COMMIT)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    return cache


def _run(args, cache):
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-m", "minitron", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_inspect_score_and_prune_dry_run_take_a_hub_id_offline(hub_cache, tiny_model_dir, text_file, tmp_path):
    r = _run(["inspect", "local/tiny-hybrid", "--json"], hub_cache)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    local = json.loads(_run(["inspect", tiny_model_dir, "--json"], hub_cache).stdout)
    assert doc["params"] == local["params"] and doc["weights"]["present"]
    assert doc["path"].endswith(COMMIT)
    r = _run(["inspect", "local/tiny-hybrid@v1", "--json"], hub_cache)
    assert r.returncode == 0 and json.loads(r.stdout)["params"] == local["params"]
    r = _run(["inspect", "local/tiny-hybrid", "--revision", "v1", "--json"], hub_cache)
    assert r.returncode == 0, r.stderr
    r = _run(["score", "local/tiny-hybrid", "--data", text_file, "--samples", "4", "--seq-len", "32",
              "--out", tmp_path / "scores", "--json"], hub_cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _run(["prune", "local/tiny-hybrid", "--hidden-size", "48", "--dry-run", "--json"], hub_cache)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"]["hidden_size"] == 48
    r = _run(["prune", "local/tiny-hybrid", "--scores", tmp_path / "scores", "--hidden-size", "48",
              "--out", tmp_path / "pruned"], hub_cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pruned" / "config.json").is_file()


def test_a_missing_hub_id_names_the_id_and_offline_mode(hub_cache):
    r = _run(["inspect", "local/not-there"], hub_cache)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "local/not-there" in line and "HF_HUB_OFFLINE" in line
    r = _run(["inspect", "local/tiny-hybrid@nope"], hub_cache)
    assert r.returncode == 2 and "local/tiny-hybrid@nope" in r.stderr


def test_revision_on_a_local_path_is_refused(tiny_model_dir, hub_cache):
    r = _run(["inspect", tiny_model_dir, "--revision", "main"], hub_cache)
    assert r.returncode == 2 and "--revision" in r.stderr


def test_distill_and_eval_take_hub_ids_offline(hub_cache, tiny_model_dir, text_file, tmp_path):
    """distill's --teacher and eval's models resolve from the cache too (their weights: the snapshot's)."""
    from distill_helpers import base_args, make_pruned_student

    student = make_pruned_student(tiny_model_dir, tmp_path / "student")
    args = base_args("local/tiny-hybrid", student, text_file, tmp_path / "distilled", "--steps", "2", "--json")
    r = _run(args, hub_cache)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 2
    r = _run(["eval", "local/tiny-hybrid", tmp_path / "distilled", "--teacher", "local/tiny-hybrid", "--data", text_file,
              "--seq-len", "32", "--samples", "2", "--json"], hub_cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    models = json.loads(r.stdout)["models"]
    assert models[0]["path"].endswith(COMMIT) and models[0]["kl"] == pytest.approx(0.0, abs=1e-6)
