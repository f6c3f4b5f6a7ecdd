"""`minitron prune` on MoE models: explicit expert shapes on Nemotron 3 Nano's config (exact against
transformers' model), searches under total + active targets, a written tiny MoE model, bad input."""

from __future__ import annotations

import json
import random

import pytest
from conftest import REF_9B, REFERENCE
from prune_helpers import BAD_EXPERT_ARGS, assert_refused
from test_moe_accounting import _meta_model, counted_active
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.models.architecture import Architecture
from minitron.prune.select import Shape, make_plan

REF_NANO3 = REFERENCE / "nemotron-3-nano-30b-a3b"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["prune", *map(str, args)])


def test_explicit_expert_shape_is_exact_against_the_built_model():
    r = invoke(REF_NANO3, "--experts", 96, "--moe-ffn-size", 1536, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    p = doc["plan"]
    assert (p["experts"], p["moe_ffn_size"], p["shared_expert_ffn_size"], p["experts_per_token"]) == (96, 1536, 3712, 6)
    arch = Architecture.from_path(REF_NANO3)
    cfg = make_plan(arch, Shape(experts=96, moe_ffn_size=1536)).target().to_config()
    assert (cfg["n_routed_experts"], cfg["moe_intermediate_size"]) == (96, 1536)
    total, active = counted_active(_meta_model(cfg), cfg["num_experts_per_tok"])
    assert (doc["params_after"], doc["active_params_after"]) == (total, active)
    assert (doc["params_before"], doc["active_params_before"]) == (arch.total_params, arch.total_active_params)
    assert total < 0.7 * doc["params_before"]


def test_total_and_active_targets_both_hold_for_every_candidate():
    space = ["--search", "hidden_size=2688:2688", "--search", "mamba_heads=64:64"]
    r = invoke(REF_NANO3, "--target-params", "22B", "--target-active-params", "3B", *space, "--candidates", 0,
               "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["target"] == {"kind": "params+active_params", "target_params": 22_000_000_000,
                             "target_active_params": 3_000_000_000}
    cands = doc["candidates"]
    assert len(cands) == doc["n_feasible"] > 0
    assert all(c["params"] <= 22e9 and c["active_params"] <= 3e9 and c["fits"] for c in cands)
    assert doc["params_after"] <= 22e9 and doc["active_params_after"] <= 3e9
    assert doc["search_space"]["experts"] == [80, 128, 8] and doc["search_space"]["moe_ffn_size"][2] == 64
    # Each target alone admits candidates the other refuses: the intersection is a real constraint.
    alone = {}
    for flag, value in (("--target-params", "22B"), ("--target-active-params", "3B")):
        r = invoke(REF_NANO3, flag, value, *space, "--candidates", 0, "--dry-run", "--json")
        alone[flag] = json.loads(r.stdout)
    assert any(c["active_params"] > 3e9 for c in alone["--target-params"]["candidates"])
    assert any(c["params"] > 22e9 for c in alone["--target-active-params"]["candidates"])
    # The closed-form sweep equals the full accounting.
    arch = Architecture.from_path(REF_NANO3)
    for c in random.Random(0).sample(cands, 20):
        a = arch.with_(n_routed_experts=c["experts"], moe_intermediate_size=c["moe_ffn_size"],
                       moe_shared_expert_intermediate_size=c["shared_expert_ffn_size"])
        assert (c["params"], c["active_params"]) == (a.total_params, a.total_active_params)


def test_active_target_with_a_memory_budget_and_searched_top_k():
    r = invoke(REF_NANO3, "--target-active-params", "2.5B", "--gpu", "a100-40gb", "--context-length", 8192,
               "--search", "experts_per_token=4:6", "--search", "hidden_size=2688:2688", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["target"]["kind"] == "active_params+memory"
    assert doc["budget"]["fits"] and doc["active_params_after"] <= 2.5e9
    assert all(c["memory_bytes"] <= doc["budget"]["budget_bytes"] for c in doc["candidates"])
    assert {c["experts_per_token"] for c in doc["candidates"]} <= {4, 5, 6}


def test_unreachable_active_target_exits_3_naming_the_flag():
    r = invoke(REF_NANO3, "--target-active-params", "1B", "--dry-run")
    assert r.exit_code == 3
    assert "--target-active-params" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_written_moe_model_loads_with_stock_transformers_and_generates(tiny_model_dir, random_scores_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pruned"
    r = invoke(tiny_model_dir, "--scores", random_scores_dir, "--experts", 2, "--moe-ffn-size", 16,
               "--shared-expert-ffn-size", 32, "--experts-per-token", 1, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["moe_shared_expert_intermediate_size"],
            cfg["num_experts_per_tok"]) == (2, 16, 32, 1)
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys")
    assert sum(p.numel() for p in model.parameters()) == doc["params_after"]
    assert Architecture.from_path(out).total_active_params == doc["active_params_after"] < doc["active_params_before"]
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
    prov = json.loads((out / "minitron.json").read_text())["result"]
    assert prov["plan"]["experts"] == 2 and len(prov["indices"]["experts"]["4"]) == 2
    assert all(len(v) == 16 for v in prov["indices"]["moe_ffn"]["4"].values())
    assert prov["indices"]["experts_per_token"] == 1


@pytest.mark.parametrize("args,flag,match", [
    *BAD_EXPERT_ARGS,
    (["--shared-expert-ffn-size", 0], "--shared-expert-ffn-size", ">= 1"),
])
def test_bad_moe_input_one_line_exit_2_nothing_written(tiny_model_dir, random_scores_dir, tmp_path, args, flag, match):
    out = tmp_path / "out"
    assert_refused(invoke(tiny_model_dir, "--scores", random_scores_dir, *args, "--out", out), flag, match, out)


@pytest.mark.parametrize("flag", ["--experts", "--moe-ffn-size", "--shared-expert-ffn-size", "--experts-per-token"])
def test_moe_flags_on_a_model_without_moe_layers(flag):
    r = invoke(REF_9B, flag, 2, "--dry-run")
    assert r.exit_code == 2 and flag in r.stderr and "no such units" in r.stderr


def test_group_limited_routing_is_checked(tmp_path):
    cfg = json.loads((REF_NANO3 / "config.json").read_text()) | {"n_group": 8, "topk_group": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = invoke(tmp_path, "--experts", 100, "--dry-run")
    assert r.exit_code == 2 and "--experts" in r.stderr and "8 routing groups" in r.stderr
    r = invoke(tmp_path, "--experts", 96, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    r = invoke(tmp_path, "--experts", 8, "--experts-per-token", 5, "--dry-run")
    assert r.exit_code == 2 and "--experts-per-token" in r.stderr and "4 of 8 groups" in r.stderr


@pytest.mark.parametrize("args,flag,match", [
    (["--target-active-params", "4B"], "--target-active-params", "not below the model's 3,580,073,408"),
    (["--target-active-params", "three"], "--target-active-params", "cannot read"),
    (["--target-params", "22B", "--search", "experts=8:136:8"], "--search", "larger than the model's 128"),
    (["--target-params", "22B", "--target-active-params", "4B"], "--target-active-params", "not below"),
])
def test_bad_search_input(args, flag, match):
    r = invoke(REF_NANO3, *args, "--dry-run")
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and match in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_expert_search_on_a_model_without_moe_layers():
    r = invoke(REF_9B, "--target-params", "8B", "--search", "experts=8:16:8", "--dry-run")
    assert r.exit_code == 2 and "--search" in r.stderr and "no MoE layer" in r.stderr
