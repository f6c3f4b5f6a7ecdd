"""The shipped example recipes, as a user runs them first: `minitron run <recipe> --dry-run`.

The recipes name real hub ids; the test builds an offline Hugging Face cache (the cache's own layout)
holding only each model's config.json - exactly what a dry run fetches - and checks the paper's
figures to the parameter: Llama-3.1-8B -> Minitron-4B-Width, and Nemotron Nano 2 12B -> 9B under
the A10G budget, with the distillation memory plan of the shape the dry run picks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from distill_helpers import subprocess_env

from minitron.assets import ASSETS

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
MODELS = {"nvidia/NVIDIA-Nemotron-Nano-12B-v2-Base": "nemotron-nano-12b-v2-base",
          "meta-llama/Llama-3.1-8B": "llama-3.1-8b"}  # fmt: skip


@pytest.fixture(scope="module")
def config_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    for repo_id, bundled in MODELS.items():
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        snap = repo / "snapshots" / COMMIT
        snap.mkdir(parents=True)
        shutil.copy(ASSETS / "configs" / bundled / "config.json", snap / "config.json")
    return cache


def _run(cache, cwd, *args):
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-m", "minitron", "run", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)  # fmt: skip


def test_the_llama_width_recipe_gives_the_published_4b(config_cache, tmp_path):
    r = _run(config_cache, tmp_path, ROOT / "examples" / "llama-3.1-8b-to-4b-width.yaml", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    prune = doc["stages"]["prune"]["doc"]
    assert prune["params_before"] == 8_030_261_248 and prune["params_after"] == 4_512_746_496
    assert (prune["plan"]["hidden_size"], prune["plan"]["ffn_size"]) == (3072, 9216)
    distill = doc["stages"]["distill"]["doc"]
    assert distill["asked"]["devices"] == 8 and distill["asked"]["fsdp"] and distill["fits"] is True
    assert doc["stages"]["score"]["skipped"] and doc["stages"]["eval"]["skipped"]
    assert {m["key"] for m in doc["missing"]} == {"score.data", "distill.data", "distill.eval-data", "eval.data"}
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_the_12b_recipe_lists_the_paper_9b_under_the_a10g_budget(config_cache, tmp_path):
    r = _run(config_cache, tmp_path, ROOT / "examples" / "nemotron-nano-12b-to-9b-a10g.yaml", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    prune = json.loads(r.stdout)["stages"]["prune"]["doc"]
    assert prune["params_before"] == 12_310_001_152
    budget = prune["budget"]["budget_bytes"]
    assert budget / 2**30 == pytest.approx(19.66, abs=0.005)
    assert all(c["fits"] and c["memory_bytes"] <= budget for c in prune["candidates"])
    paper = [c for c in prune["candidates"]
             if (c["num_layers"], c["hidden_size"], c["ffn_size"], c["mamba_heads"]) == (56, 4480, 15680, 128)]
    assert [c["params"] for c in paper] == [8_888_227_328]
    # The human form says the same in a few lines and names the data the real run still needs.
    r = _run(config_cache, tmp_path, ROOT / "examples" / "nemotron-nano-12b-to-9b-a10g.yaml", "--dry-run")
    assert r.returncode == 0 and "12,310,001,152 ->" in r.stdout and "needed for the real run: score.data" in r.stdout


def test_every_shipped_recipe_checks(config_cache, tmp_path):
    """--check validates keys and types against each command; the example recipes' data does not exist
    here, which --check refuses naming the key (and --dry-run lists instead)."""
    r = _run(config_cache, tmp_path, ROOT / "examples" / "demo.yaml", "--check", "--json")
    assert r.returncode == 0, r.stderr
    for name in ("llama-3.1-8b-to-4b-width.yaml", "nemotron-nano-12b-to-9b-a10g.yaml"):
        r = _run(config_cache, tmp_path, ROOT / "examples" / name, "--check")
        assert r.returncode == 2 and r.stderr.startswith("error: score.data: no such file"), r.stderr
