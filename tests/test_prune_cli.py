"""`minitron prune` end to end: written models load with stock transformers; the JSON contract; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REF_12B
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.importance.scores import Scores, expected_shapes
from minitron.io import model_fingerprint
from minitron.models.architecture import Architecture

runner = CliRunner()
PLAN_KEYS = {"hidden_size", "ffn_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads", "num_layers",
             "dropped_layers", "pattern"}
CAND_KEYS = {"num_layers", "hidden_size", "ffn_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads",
             "params", "memory_bytes", "fits"}


def _scores_dir(path, arch, fingerprint, seed=1):
    g = torch.Generator().manual_seed(seed)
    Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()}, fingerprint=fingerprint).save(path)
    return path


@pytest.fixture(scope="module")
def scores_dir(tiny_model_dir, tmp_path_factory):
    arch = Architecture.from_path(tiny_model_dir)
    return _scores_dir(tmp_path_factory.mktemp("scores"), arch, model_fingerprint(tiny_model_dir))


def invoke(*args):
    return runner.invoke(app, ["prune", *map(str, args)])


def test_exact_prune_writes_a_model_stock_transformers_loads(tiny_model_dir, scores_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pruned"
    r = invoke(tiny_model_dir, "--scores", scores_dir, "--hidden-size", 48, "--ffn-size", 64, "--mamba-heads", 4,
               "--kv-heads", 1, "--num-layers", 7, "--out", out, "--json", "--max-shard-size", "100KB")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) >= {"params_before", "params_after", "memory", "plan"}
    assert set(doc["plan"]) >= PLAN_KEYS and doc["plan"]["num_layers"] == 7
    assert doc["plan"]["attention_heads"] == 4 and doc["plan"]["kv_heads"] == 1
    assert doc["target"] == {"kind": "exact", "hidden_size": 48, "ffn_size": 64, "mamba_heads": 4, "kv_heads": 1,
                             "num_layers": 7, "iterative": False}
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.parameters()) == doc["params_after"]
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 5
    prov = json.loads((out / "minitron.json").read_text())
    assert prov["command"] == "prune" and prov["result"]["params_after"] == doc["params_after"]
    assert prov["result"]["target"] == doc["target"] and prov["result"]["memory_before"] == doc["memory_before"]
    assert prov["inputs"]["model_fingerprint"] == model_fingerprint(tiny_model_dir)
    assert len(prov["result"]["indices"]["hidden"]) == 48
    assert (out / "generation_config.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
    assert not list(tmp_path.glob(".pruned.tmp-*"))


def test_search_with_proxy_and_distillation(tiny_model_dir, scores_dir, text_file, tmp_path):
    arch = Architecture.from_path(tiny_model_dir)
    target = int(arch.total_params * 0.8)
    r = invoke(tiny_model_dir, "--scores", scores_dir, "--target-params", target, "--search", "hidden_size=48:64:16",
               "--search", "ffn_size=64:96:32", "--search", "mamba_heads=6:8:2", "--search", "num_layers=8:9",
               "--data", text_file, "--seq-len", 32, "--proxy-samples", 2, "--shortlist", 3,
               "--candidate-distill-steps", 1, "--distill-samples", 2, "--candidates", 2, "--out", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    cands = doc["candidates"]
    assert 1 <= len(cands) <= 2 and all(set(c) >= CAND_KEYS for c in cands)
    assert all(c["fits"] and c["params"] <= target for c in cands)
    assert "proxy_kl" in cands[0] and "distill_kl" in cands[0]
    assert doc["ranking"].startswith("distill_kl")
    assert doc["params_after"] == cands[0]["params"] and (tmp_path / "o" / "config.json").is_file()


def test_candidates_zero_lists_every_feasible(tiny_model_dir):
    target = int(Architecture.from_path(tiny_model_dir).total_params * 0.85)
    r = invoke(tiny_model_dir, "--target-params", target, "--search", "hidden_size=32:64:16", "--search",
               "ffn_size=32:96:16", "--candidates", 0, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["candidates"]) == doc["n_feasible"] > 10
    assert doc["n_candidates"] > doc["n_feasible"]
    assert all(c["params"] <= target for c in doc["candidates"])
    assert [c["params"] for c in doc["candidates"]] == sorted((c["params"] for c in doc["candidates"]), reverse=True)


def test_paper_dry_run_on_the_bare_12b_config():
    r = invoke(REF_12B, "--hidden-size", 4480, "--ffn-size", 15680, "--mamba-heads", 128, "--drop-layers",
               "7,8,17,18,48,52", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["params_after"] == 8_888_227_328
    assert doc["plan"]["pattern"] == "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"


def test_paper_a10g_search_dry_run():
    r = invoke(REF_12B, "--gpu", "a10g", "--headroom", 0.05, "--reserve-gib", 1.3, "--context-length", 131072,
               "--memory-dtype", "bf16", "--search", "num_layers=52:56:2", "--search", "hidden_size=4480:5120:128",
               "--search", "ffn_size=13440:20480:64", "--search", "mamba_heads=112:128:8",
               "--drop-order", "7,8,17,18,48,52,29,30,39,40", "--candidates", 0, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    budget = doc["budget"]["budget_bytes"]
    assert all(c["memory_bytes"] <= budget and c["fits"] for c in doc["candidates"])
    assert any((c["num_layers"], c["hidden_size"], c["ffn_size"], c["mamba_heads"]) == (56, 4480, 15680, 128)
               for c in doc["candidates"])


def test_infeasible_budget_exits_3_naming_smallest():
    r = invoke(REF_12B, "--memory-budget", "8GiB", "--dry-run")
    assert r.exit_code == 3
    assert "smallest the search space reaches is" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,flag", [
    (["--hidden-size", 128], "--hidden-size"),
    (["--mamba-heads", 5], "--mamba-heads"),
    (["--attention-heads", 3, "--kv-heads", 2], "--attention-heads"),
    (["--drop-layers", "1,99"], "--drop-layers"),
    (["--target-params", "1B", "--hidden-size", 32], "--search"),
    (["--hidden-size", 32], "--scores"),  # writing needs scores
])
def test_bad_input_one_line_nothing_written(tiny_model_dir, tmp_path, args, flag):
    out = tmp_path / "out"
    r = invoke(tiny_model_dir, *args, "--out", out)
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_scores_of_another_model_are_refused(tiny_model_dir, tmp_path):
    arch = Architecture.from_path(tiny_model_dir)
    (tmp_path / "s").mkdir()
    other = _scores_dir(tmp_path / "s", arch, fingerprint="0123456789abcdef")
    r = invoke(tiny_model_dir, "--scores", other, "--hidden-size", 32, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "another model" in r.stderr and "--scores" in r.stderr
    assert not (tmp_path / "o").exists()


def test_out_equal_to_input_or_existing(tiny_model_copy, scores_dir, tmp_path):
    before = sorted(p.name for p in tiny_model_copy.iterdir())
    r = invoke(tiny_model_copy, "--scores", scores_dir, "--hidden-size", 32, "--out", tiny_model_copy)
    assert r.exit_code == 2 and "same as the input" in r.stderr
    assert sorted(p.name for p in tiny_model_copy.iterdir()) == before
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    r = invoke(tiny_model_copy, "--hidden-size", 32, "--out", existing)
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_iterative_depth_rescoring_respects_keep_types(tiny_model_dir, scores_dir, text_file):
    from minitron.data import load_blocks
    from minitron.importance.engine import layer_scores
    from minitron.models.checkpoint import load_model, load_tokenizer

    r = invoke(tiny_model_dir, "--scores", scores_dir, "--num-layers", 7, "--iterative", "--keep-layer-types",
               "attention=2,moe=1", "--data", text_file, "--seq-len", 32, "--proxy-samples", 2, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    dropped = doc["plan"]["dropped_layers"]
    assert len(dropped) == 2 and doc["plan"]["pattern"].count("*") == 2 and "E" in doc["plan"]["pattern"]
    # The first layer dropped is the least important one of a fresh scoring (among the droppable types).
    model = load_model(tiny_model_dir)
    blocks = load_blocks([text_file], load_tokenizer(tiny_model_dir), seq_len=32, samples=2, seed=0)
    s = layer_scores(model, blocks, metric="kl")
    pattern = Architecture.from_path(tiny_model_dir).pattern
    first = min((i for i in range(len(pattern)) if pattern[i] in "M-"), key=lambda i: (float(s[i]), i))
    assert first in dropped


def test_keep_everything_through_the_cli_is_bit_identical(tiny_model_dir, scores_dir, tmp_path):
    from minitron.models.checkpoint import load_model

    out = tmp_path / "same"
    r = invoke(tiny_model_dir, "--scores", scores_dir, "--hidden-size", 64, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    a, b = load_model(tiny_model_dir), load_model(out)
    ids = torch.randint(3, 384, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(ids, use_cache=False).logits, b(ids, use_cache=False).logits)


@pytest.mark.parametrize("args,flag", [
    (["--target-params", "10B"], "--target-params"),
    (["--drop-layers", "3,7", "--keep-layer-types", "attention=1"], "--drop-layers"),
    (["--num-layers", 3, "--drop-layers", "1"], "--drop-layers"),
    (["--search", "hidden_size=32:64", "--hidden-size", 32], "--search"),
    (["--memory-budget", "1GiB", "--search", "mamba_heads=5:8"], "--search"),
])
def test_more_bad_input(tiny_model_dir, args, flag):
    r = invoke(tiny_model_dir, *args, "--dry-run")
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bare_config_only_dry_run(tmp_path):
    r = invoke(REF_12B, "--hidden-size", 4480, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--dry-run" in r.stderr and not (tmp_path / "o").exists()
    r = invoke(REF_12B, "--num-layers", 56, "--dry-run")  # depth by scores needs scores
    assert r.exit_code == 2 and "--num-layers" in r.stderr


def test_one_attention_layer_is_kept_by_default(tiny_model_dir, scores_dir):
    """transformers' cache cannot serve a Nemotron-H without attention: the last one stays unless attention=0."""
    r = invoke(tiny_model_dir, "--drop-layers", "3,7", "--dry-run")  # the tiny model's two attention layers
    assert r.exit_code == 2 and "attention" in r.stderr and "--drop-layers" in r.stderr
    r = invoke(tiny_model_dir, "--drop-layers", "3,7", "--keep-layer-types", "attention=0", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert "*" not in json.loads(r.stdout)["plan"]["pattern"]
    # The search's drop order skips the last attention layer (7) too.
    r = invoke(tiny_model_dir, "--target-params", 150000, "--search", "num_layers=2:9", "--search", "hidden_size=64:64",
               "--drop-order", "3,7,0,1,2,4,5,6,8", "--candidates", 0, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    cands = json.loads(r.stdout)["candidates"]
    assert cands and all(7 not in c["dropped_layers"] for c in cands)
    assert any(3 in c["dropped_layers"] for c in cands)
