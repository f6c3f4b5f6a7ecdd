"""Pure plan / ranking / search tests: no model is built (fast)."""

from __future__ import annotations

import random

import pytest
import torch

from minitron.errors import InfeasibleError, InputError
from minitron.memory import Serving, estimate, make_budget
from minitron.models.architecture import Architecture
from minitron.models.tensors import model_specs
from minitron.prune.plan import PrunePlan, tensor_indices
from minitron.prune.search import (
    default_space,
    enumerate_candidates,
    parse_params,
    parse_search,
    rank_by_params,
    require_feasible,
)
from minitron.prune.select import (
    Shape,
    drop_sequence,
    grouped_top_k,
    make_plan,
    top_k,
    validate_shape,
)
from minitron.prune.target import Target, parse_keep_types, parse_layer_list
from minitron.testing import tiny_config
from tests.conftest import REF_9B, REF_12B

PAPER_SPACE = ["num_layers=52:56:2", "hidden_size=4480:5120:128", "ffn_size=13440:20480:64", "mamba_heads=112:128:8"]
PAPER_ORDER = [7, 8, 17, 18, 48, 52, 29, 30, 39, 40]


@pytest.fixture(scope="module")
def tiny():
    return Architecture.from_config(tiny_config())


@pytest.fixture(scope="module")
def a12():
    return Architecture.from_path(REF_12B)


def test_top_k_keeps_largest_in_order():
    assert top_k([0.1, 0.9, 0.5, 0.7], 2) == (1, 3)
    assert top_k([1.0, 1.0, 1.0], 2) == (0, 1)  # ties: lower index first


def test_grouped_top_k_same_count_per_group():
    s = [1, 5, 2, 9, 0, 3, 4, 1]  # groups [1,5,2,9] and [0,3,4,1]
    assert grouped_top_k(s, 2, 2) == (1, 3, 5, 6)
    assert grouped_top_k(s, 4, 1) == (1, 3, 5, 6)


def test_keep_all_indices_are_whole(tiny):
    plan = PrunePlan.keep_all(tiny)
    for spec in model_specs(tiny).values():
        assert all(ix is None for ix in tensor_indices(spec, plan)), spec.name
    assert plan.target() == tiny


def test_tensor_indices_of_fused_mamba_layout(tiny):
    a = tiny  # 8 heads x 12, 2 groups, state 16
    plan = make_plan(a, Shape(mamba_heads=4, mamba_head_dim=6), None)
    heads, dims = plan.mamba_heads[0], plan.mamba_dims[0]
    assert heads == (0, 1, 4, 5)  # two per group (identity ranking)
    spec = model_specs(a)["layers.0.mixer.in_proj.weight"]
    rows, cols = tensor_indices(spec, plan)
    HP, GN = 8 * 12, 2 * 16
    inner = [h * 12 + c for h in heads for c in dims]
    assert rows == inner + [HP + i for i in inner] + list(range(2 * HP, 2 * HP + 2 * GN)) + \
        [2 * HP + 2 * GN + h for h in heads]
    assert cols is None
    conv, _, _ = tensor_indices(model_specs(a)["layers.0.mixer.conv1d.weight"], plan)
    assert conv == inner + list(range(HP, HP + 2 * GN))


def test_gqa_consistent_attention_heads(tiny):
    from minitron.importance.scores import Scores, expected_shapes

    sc = {k: torch.rand(s) for k, s in expected_shapes(tiny).items()}
    sc["attention_heads"] = torch.tensor([[1., 2, 3, 4, 8, 7, 6, 5]] * 2)
    sc["kv_heads"] = torch.tensor([[10., 26]] * 2)
    S = lambda: Scores(sc)  # noqa: E731

    plan = make_plan(tiny, Shape(attention_heads=4), S())
    assert plan.q_heads[3] == (2, 3, 4, 5)  # 2 best of group 0 (heads 0-3) and of group 1 (heads 4-7)
    assert plan.kv_heads[3] == (0, 1)
    plan = make_plan(tiny, Shape(kv_heads=1), S())
    assert plan.kv_heads[3] == (1,) and plan.q_heads[3] == (4, 5, 6, 7)
    assert plan.target().num_attention_heads == 4 and plan.target().num_key_value_heads == 1


@pytest.mark.parametrize("shape,flag", [
    (Shape(mamba_heads=3), "--mamba-heads"),
    (Shape(attention_heads=3), "--attention-heads"),
    (Shape(hidden_size=65), "--hidden-size"),
    (Shape(ffn_size=0), "--ffn-size"),
    (Shape(attention_heads=8, kv_heads=1), "--attention-heads"),
])
def test_bad_shapes_name_the_flag(tiny, shape, flag):
    with pytest.raises(InputError, match=flag):
        validate_shape(tiny, shape)


def test_layer_lists_and_keep_types(tiny):
    assert parse_layer_list("3, 1", 9, "--drop-layers") == [3, 1]
    for bad in ("9", "1,1", "x", ""):
        with pytest.raises(InputError, match="--drop-layers"):
            parse_layer_list(bad, 9, "--drop-layers")
    assert parse_keep_types("attention=2,M=1") == {"*": 2, "M": 1}
    with pytest.raises(InputError, match="--keep-layer-types"):
        parse_keep_types("attention")
    # M-M*EM-*M: protect both attention layers -> they are skipped in the order
    assert drop_sequence(tiny, [3, 7, 1, 0], {"*": 2}) == [1, 0]


def test_paper_9b_plan_from_12b(a12):
    plan = make_plan(a12, Shape(hidden_size=4480, ffn_size=15680, mamba_heads=128), None, [7, 8, 17, 18, 48, 52])
    t = plan.target()
    nine = Architecture.from_path(REF_9B)
    assert t.total_params == 8_888_227_328 == nine.total_params
    assert t.pattern == nine.pattern
    assert t.to_config()["hybrid_override_pattern"] == nine.raw["hybrid_override_pattern"]


def test_paper_a10g_search_lists_9b_and_respects_budget(a12):
    budget = make_budget(gpu="a10g", headroom=0.05, reserve_gib=1.3)
    space = default_space(a12, depth=True) | parse_search(PAPER_SPACE)
    cands = enumerate_candidates(a12, space, drop_order=PAPER_ORDER,
                                 target=Target(Serving(context_length=131072), budget=budget))
    feasible = rank_by_params(cands)
    shapes = {(c.num_layers, c.hidden_size, c.ffn_size, c.mamba_heads) for c in feasible}
    assert (56, 4480, 15680, 128) in shapes
    assert all(c.memory_bytes <= budget.budget_bytes for c in feasible)
    assert any(not c.fits for c in cands)  # the 12B corner does not fit
    nine = next(c for c in feasible if (c.num_layers, c.hidden_size, c.ffn_size, c.mamba_heads) == (56, 4480, 15680, 128))
    assert nine.params == 8_888_227_328 and nine.dropped_layers == (7, 8, 17, 18, 48, 52)


def test_fast_accounting_equals_full_accounting(a12):
    space = default_space(a12, depth=True) | parse_search(PAPER_SPACE + ["attention_heads=32:40:8", "kv_heads=4:8:4"])
    cands = enumerate_candidates(a12, space, drop_order=PAPER_ORDER,
                                 target=Target(Serving(context_length=4096, batch_size=2, state_dtype="bf16")))
    rng = random.Random(0)
    for c in rng.sample(cands, 40):
        pattern = "".join(ch for i, ch in enumerate(a12.pattern) if i not in set(c.dropped_layers))
        arch = a12.with_(pattern=pattern, hidden_size=c.hidden_size, intermediate_size=c.ffn_size,
                         mamba_num_heads=c.mamba_heads, num_attention_heads=c.attention_heads,
                         num_key_value_heads=c.kv_heads)
        assert c.params == arch.total_params
        assert c.memory_bytes == estimate(arch, context_length=4096, batch_size=2, state_dtype="bf16").total_bytes


def test_dropped_attention_layers_take_their_kv(a12):
    space = default_space(a12, depth=True) | parse_search(["num_layers=61:62", "hidden_size=5120:5120",
                                                           "ffn_size=20480:20480", "mamba_heads=128:128"])
    by_n = {c.num_layers: c for c in enumerate_candidates(a12, space, drop_order=[7],
                                                            target=Target(Serving(context_length=131072)))}
    freed = by_n[62].memory_bytes - by_n[61].memory_bytes
    attn = a12.layer_params("*") * 2 + 2 * 8 * 128 * 131072 * 2
    assert freed == attn


def test_infeasible_budget_names_smallest(a12):
    budget = make_budget(memory_budget="10GiB")
    space = default_space(a12, depth=True) | parse_search(PAPER_SPACE)
    target = Target(Serving(), budget=budget)
    cands = enumerate_candidates(a12, space, drop_order=PAPER_ORDER, target=target)
    with pytest.raises(InfeasibleError, match=r"smallest the search space reaches is 1[0-9]\.\d\d GiB") as e:
        require_feasible(cands, target)
    assert e.value.exit_code == 3


def test_parse_params_and_search():
    assert parse_params("9B") == 9_000_000_000 and parse_params("8.9e9") == 8_900_000_000
    assert parse_params("8,888,227,328") == 8_888_227_328
    with pytest.raises(InputError, match="--target-params"):
        parse_params("nine")
    assert parse_search(["hidden_size=64:128:32"])["hidden_size"].values() == [64, 96, 128]
    for bad in ("hidden=1:2", "hidden_size=5:2", "hidden_size=a:b"):
        with pytest.raises(InputError, match="--search"):
            parse_search([bad])


def test_default_space_rules(a12):
    s = default_space(a12, depth=True)
    assert s["num_layers"].lo == 62 - 12 and s["hidden_size"].values()[-1] == 5120
    assert all(v % 64 == 0 for v in s["hidden_size"].values()) and s["hidden_size"].lo >= 0.6 * 5120
    assert all(v % 8 == 0 for v in s["mamba_heads"].values()) and s["mamba_heads"].lo >= 0.6 * 128
    assert default_space(a12, depth=False)["num_layers"].values() == [62]
