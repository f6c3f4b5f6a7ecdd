"""The families through the CLI: the published pruning pairs as exact `--dry-run`s on the reference configs,
`inspect` counts, bad input, and score -> prune -> distill -> eval end to end on a tiny random Llama."""

from __future__ import annotations

import json

import pytest
from conftest import REFERENCE
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.testing import make_tiny_model_dir, tiny_dense_config

runner = CliRunner()

# README of the reference configs: parameters counted from transformers' own modules.
REFERENCE_PARAMS = {
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-minitron-4b-width-base": 4_512_746_496,
    "llama-3.1-minitron-4b-depth-base": 4_540_469_248,
    "mistral-nemo-base-2407": 12_247_782_400,
    "mistral-nemo-minitron-8b-base": 8_414_105_600,
    "qwen3-8b": 8_190_735_360,
    "qwen3-8b-pruned-depth-6b-tutorial": 5_875_378_176,
    "qwen3-8b-pruned-width-6b-tutorial": 5_977_809_408,
    "nemotron-h-8b-base-8k": 8_100_852_736,
    "nemotron-h-4b-base-8k": 4_489_223_040,
    "nemotron-3-nano-30b-a3b": 31_577_937_344,
    "nemotron-nano-12b-v2-base": 12_310_001_152,
    "nemotron-nano-9b-v2": 8_888_227_328,
    "bamba-9b": 9_780_235_392,
    "granite-4.0-h-micro": 3_191_396_096,
    "falcon-h1-0.5b-base": 521_411_104,
    "zamba2-1.2b": 1_215_064_704,
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("llama") / "model", tiny_dense_config("llama"))


def _json(args):
    r = runner.invoke(app, [*map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_inspect_counts_every_reference_exactly(name):
    doc = _json(["inspect", REFERENCE / name])
    assert doc["params"]["total"] == REFERENCE_PARAMS[name]


@pytest.mark.parametrize(("name", "args", "params", "same_as"), [
    ("llama-3.1-8b", ["--hidden-size", 3072, "--ffn-size", 9216], 4_512_746_496, "llama-3.1-minitron-4b-width-base"),
    ("llama-3.1-8b", ["--drop-layers", ",".join(map(str, range(16, 32)))], 4_540_469_248,
     "llama-3.1-minitron-4b-depth-base"),
    ("mistral-nemo-base-2407", ["--hidden-size", 4096, "--ffn-size", 11520], 8_414_105_600,
     "mistral-nemo-minitron-8b-base"),
    ("qwen3-8b", ["--hidden-size", 3584, "--ffn-size", 9216], 5_977_809_408, "qwen3-8b-pruned-width-6b-tutorial"),
    ("qwen3-8b", ["--drop-layers", ",".join(map(str, range(24, 36)))], 5_875_378_176,
     "qwen3-8b-pruned-depth-6b-tutorial"),
    ("nemotron-h-8b-base-8k", ["--hidden-size", 3072, "--ffn-size", 12288, "--mamba-heads", 112], 4_489_223_040,
     "nemotron-h-4b-base-8k"),
])
def test_published_pairs_dry_run_exactly(name, args, params, same_as):
    doc = _json(["prune", REFERENCE / name, *args, "--dry-run"])
    assert doc["params_after"] == params
    assert doc["family"] == json.loads((REFERENCE / name / "config.json").read_text())["model_type"]
    published = _json(["inspect", REFERENCE / same_as])
    for key, field in (("hidden_size", "hidden_size"), ("ffn_size", "intermediate_size"),
                       ("num_layers", "num_layers"), ("kv_heads", "num_key_value_heads")):
        assert doc["plan"][key] == published[field]


def test_hybrid_references_dry_run():
    doc = _json(["prune", REFERENCE / "bamba-9b", "--hidden-size", 2048, "--dry-run"])  # Mamba width 8192 = 4 x 2048
    assert doc["family"] == "bamba" and doc["params_after"] < 9_780_235_392
    r = runner.invoke(app, ["prune", str(REFERENCE / "bamba-9b"), "--hidden-size", "3072", "--dry-run"])
    assert r.exit_code == 2 and "integer mamba_expand" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    doc = _json(["prune", REFERENCE / "bamba-9b", "--hidden-size", 3072, "--mamba-heads", 96, "--dry-run"])
    assert doc["plan"]["mamba_heads"] == 96
    doc = _json(["prune", REFERENCE / "granite-4.0-h-micro", "--target-params", "2.5B", "--dry-run"])
    assert doc["family"] == "granitemoehybrid" and doc["params_after"] <= 2_500_000_000
    assert doc["n_feasible"] > 0 and doc["plan"]["mamba_heads"] * 64 % doc["plan"]["hidden_size"] == 0


def test_falcon_and_zamba2_references_dry_run():
    """Falcon-H1: every axis, its Mamba width free of the hidden size. Zamba2: depth of Mamba layers only;
    a cut through the shared block is refused with its reason (one line, exit 2)."""
    doc = _json(["prune", REFERENCE / "falcon-h1-0.5b-base", "--hidden-size", 768, "--ffn-size", 1536,
                 "--mamba-heads", 16, "--dry-run"])
    assert doc["family"] == "falcon_h1" and doc["plan"]["mamba_heads"] == 16 and doc["params_after"] < 521_411_104
    doc = _json(["prune", REFERENCE / "falcon-h1-0.5b-base", "--target-params", "400M", "--dry-run"])
    assert doc["params_after"] <= 400_000_000 and doc["n_feasible"] > 0
    doc = _json(["prune", REFERENCE / "zamba2-1.2b", "--drop-layers", "0,1,2", "--dry-run"])
    assert doc["family"] == "zamba2" and doc["plan"]["num_layers"] == 35
    doc = _json(["prune", REFERENCE / "zamba2-1.2b", "--target-params", "1.1B", "--drop-order", ",".join(
        map(str, range(38))), "--dry-run"])  # the search skips the hybrid layers and keeps every width
    assert doc["params_after"] <= 1_100_000_000 and doc["plan"]["hidden_size"] == 2048
    assert not set(doc["plan"]["dropped_layers"]) & {5, 11, 17, 23, 29, 35}
    for args, flag, reason in ((["--hidden-size", 1536], "--hidden-size", "shared block reads [hidden | embeddings]"),
                               (["--ffn-size", 4096], "--ffn-size", "serves every hybrid layer"),
                               (["--drop-layers", "5"], "--drop-layers", "hybrid layers cannot be dropped"),
                               (["--target-params", "1B", "--search", "hidden_size=1024:2048:512"], "--search",
                                "hidden_size cannot be cut")):
        r = runner.invoke(app, ["prune", str(REFERENCE / "zamba2-1.2b"), *args, "--dry-run"])
        assert r.exit_code == 2 and flag in r.stderr and reason in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1


def test_parameter_and_memory_targets_on_a_dense_reference():
    doc = _json(["prune", REFERENCE / "llama-3.1-8b", "--target-params", "4.6B", "--dry-run"])
    assert doc["params_after"] <= 4_600_000_000 and doc["n_feasible"] > 0
    doc = _json(["prune", REFERENCE / "mistral-nemo-base-2407", "--gpu", "a10g", "--context-length", 32768,
                 "--dry-run"])
    assert doc["budget"]["fits"] and doc["params_after"] < 12_247_782_400
    kv = 40 * 2 * doc["plan"]["kv_heads"] * 128 * 32768 * 2  # 40 layers, head_dim 128, bf16
    assert doc["memory"]["kv_cache_bytes"] == kv


def test_unsupported_family_names_the_supported_ones(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "jamba", "hidden_size": 8}))
    for args in (["inspect", tmp_path / "m"], ["prune", tmp_path / "m", "--hidden-size", 4, "--out", tmp_path / "o"]):
        r = runner.invoke(app, list(map(str, args)))
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
        supported = ("nemotron_h", "llama", "mistral", "qwen2", "qwen3", "bamba", "granitemoehybrid", "falcon_h1",
                     "zamba2")
        assert "'jamba'" in r.stderr and all(f in r.stderr for f in supported)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "flag", "reason"), [
    (["--mamba-heads", 4], "--mamba-heads", "llama models have no Mamba layers"),
    (["--mamba-head-dim", 8], "--mamba-head-dim", "llama models have no Mamba layers"),
    (["--attention-heads", 6, "--kv-heads", 4], "--attention-heads", "not a multiple"),
])
def test_a_cut_the_family_cannot_take_names_the_reason(tiny_llama, tmp_path, args, flag, reason):
    out = tmp_path / "out"
    r = runner.invoke(app, ["prune", str(tiny_llama), *map(str, args), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and reason in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# One dense family, Granite, Falcon-H1 and Zamba2 (the others share every code path and are covered piece by
# piece in test_families_dense.py / test_families_hybrid.py; all pass here, ~45 s each on 2 busy CPU cores).
@pytest.mark.parametrize("family", ["llama", "granitemoehybrid", "falcon_h1", "zamba2"])
def test_pipeline_end_to_end_on_a_tiny_family(family, tiny_llama, tmp_path, text_file):
    """score -> prune (searched to a parameter target) -> distill -> eval; every output loads with stock
    transformers and records the family."""
    from transformers import AutoModelForCausalLM

    from minitron.models.architecture import Architecture
    from minitron.testing import HYBRID_TINY, tiny_falcon_h1_config, tiny_hybrid_config, tiny_zamba2_config

    configs = {"falcon_h1": tiny_falcon_h1_config, "zamba2": tiny_zamba2_config}
    if family == "llama":
        teacher = tiny_llama
    else:
        # Granite with routed experts: the experts follow the hidden cut and depth beside the shared MLP.
        cfg = tiny_hybrid_config(f"{family}_moe") if family in HYBRID_TINY else configs[family]()
        teacher = make_tiny_model_dir(tmp_path / family, cfg)
    arch = Architecture.from_path(teacher)
    total = arch.total_params
    scores, pruned, distilled = tmp_path / "scores", tmp_path / "pruned", tmp_path / "distilled"
    doc = _json(["score", teacher, "--data", text_file, "--samples", 8, "--seq-len", 32, "--out", scores])
    assert doc["tensors"]["ffn"] == [len(arch.ffn_layers()), 96]
    n = arch.num_layers
    if family == "zamba2":  # depth only: 3 of the Mamba layers (the hybrid layers stay)
        space, target = ["--search", f"num_layers={n - 3}:{n}"], total - 3 * arch.layer_params("M")
    else:
        space, target = ["--search", f"num_layers={n - 1}:{n}", "--search", "hidden_size=32:64:16",
                         "--search", "ffn_size=64:96:32"], int(0.8 * total)
    doc = _json(["prune", teacher, "--scores", scores, "--target-params", target, *space, "--out", pruned])
    assert doc["params_after"] <= target and doc["family"] == family
    model, info = AutoModelForCausalLM.from_pretrained(pruned, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.parameters()) == doc["params_after"]
    assert json.loads((pruned / "minitron.json").read_text())["result"]["family"] == family
    _json(["distill", "--teacher", teacher, "--student", pruned, "--data", text_file, "--out", distilled,
           "--steps", 2, "--seq-len", 32, "--micro-batch-size", 2, "--global-batch-size", 2])
    assert json.loads((distilled / "minitron.json").read_text())["result"]["family"] == family
    doc = _json(["eval", teacher, pruned, distilled, "--data", text_file, "--seq-len", 32, "--samples", 4,
                 "--teacher", teacher])
    assert len(doc["models"]) == 3
