"""From a target shape and importance scores to a `PrunePlan`: rank units, keep the top ones.

Ranking rules (Minitron, Minitron-SSM):

- hidden channels, FFN neurons: the top-k by score, kept in their original order;
- attention: `kv_heads` keeps whole KV groups (ranked by the `kv_heads` score) with their query
  heads; `attention_heads` keeps the same number of query heads in every kept group, ranked inside
  the group, so the pruned layer is still valid GQA (query head j uses KV head j // (nq / nkv));
- Mamba heads: group-aware, the same number kept in each of the n_groups groups, ranked inside
  the group (the B/C projections and the gated norm are per group);
- Mamba head dim: the same channels kept in every head of a layer, ranked by that layer's score;
- routed experts: the same number kept in every MoE layer and in each of its `n_group` routing
  groups, ranked inside the group by the `experts` score (group-limited routing stays valid);
- expert width: every kept expert keeps its own top `moe_ffn_size` neurons (the `moe_ffn` score of
  that expert), the same count in all; the shared expert its top `shared_expert_ffn_size`;
- top-k (`experts_per_token`) is a number, not a ranking: it changes the function, so it is only
  ever set explicitly or by a searched axis;
- depth: the least important layers by the `layers` score, or an explicit drop order.

Without scores every ranking is the identity (the first units are kept): only used to show a plan's
shape (`--dry-run` on a bare config), never to write weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, make_dataclass

from minitron.axes import AXES, BY_NAME, FLAGS
from minitron.errors import InputError
from minitron.models.architecture import Architecture
from minitron.models.layer_types import LAYER_TYPE_NAMES
from minitron.options import option
from minitron.prune.plan import PrunePlan

SHAPE_FLAGS = FLAGS  # shape key -> its CLI flag


@dataclass(frozen=True)
class _ShapeBase:
    def is_empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    def resolve(self, arch: Architecture) -> Shape:
        """Every value filled in from the model; `kv_heads` alone keeps the query heads of the kept groups."""
        values = {ax.name: getattr(self, ax.name) or ax.size(arch) for ax in AXES}
        if self.attention_heads is None:
            values["attention_heads"] = arch.num_attention_heads // arch.num_key_value_heads * values["kv_heads"]
        return Shape(**values)


# Width targets, one field per axis of `minitron.axes.AXES` (in its order); None keeps the model's value.
# Each is also `prune`'s flag for that axis (`minitron.options`).
Shape = make_dataclass("Shape", [(ax.name, "int | None", option(ax.flag, default=None, help=ax.help)) for ax in AXES],
                       bases=(_ShapeBase,), frozen=True)
Shape.__module__ = __name__


def validate_shape(arch: Architecture, shape: Shape) -> Shape:
    """The resolved shape, or a one-line error naming the flag at fault."""
    refused = arch.impl.unsupported_axes(arch)
    for ax in AXES:
        value = getattr(shape, ax.name)
        if value is None or value == ax.size(arch):
            continue
        if ax.name in refused:
            raise InputError(f"cannot be cut: {refused[ax.name]}", flag=ax.flag)
        if not ax.units(arch):
            raise InputError(f"this {arch.family} model has no such units to cut", flag=ax.flag)
        if value < 1:
            raise InputError(f"must be >= 1, got {value}", flag=ax.flag)
        if value > ax.size(arch) and not ax.may_grow:  # top-k may rise, up to the kept experts
            raise InputError(f"{value} is larger than the model's {ax.size(arch)}", flag=ax.flag)
    s = shape.resolve(arch)
    if arch.mamba_layers() and s.mamba_heads % arch.n_groups:
        raise InputError(
            f"{s.mamba_heads} Mamba heads is not a multiple of the model's {arch.n_groups} groups", flag="--mamba-heads"
        )
    if s.attention_heads % s.kv_heads:
        raise InputError(
            f"{s.attention_heads} query heads is not a multiple of {s.kv_heads} KV heads", flag="--attention-heads"
        )
    per_group = arch.num_attention_heads // arch.num_key_value_heads
    if s.attention_heads // s.kv_heads > per_group:
        raise InputError(
            f"{s.attention_heads} query heads over {s.kv_heads} KV heads needs {s.attention_heads // s.kv_heads} "
            f"per group; the model has {per_group}",
            flag="--attention-heads",
        )
    if BY_NAME["experts"].units(arch):
        _check_routing(arch, s, shape)
    problem = arch.impl.target_problem(arch, shape_arch(arch, s))
    if problem:
        raise InputError(f"cannot be cut: {problem[1]}", flag=problem[0])
    return s


def _check_routing(arch: Architecture, s: Shape, asked: Shape) -> None:
    """Kept experts and top-k against the router: groups of equal size, k within the experts a token may use."""
    g, n, k = arch.n_group, s.experts, s.experts_per_token
    if n % g:
        raise InputError(f"{n} experts is not a multiple of the model's {g} routing groups (n_group)", flag="--experts")
    reach = arch.topk_group * (n // g)  # experts of the `topk_group` groups a token may use
    of = f"the {n} kept experts" if reach == n else f"{arch.topk_group} of {g} groups of {n // g} kept experts"
    if k > reach and asked.experts_per_token is not None:
        raise InputError(f"{k} is above the {reach} experts a token can reach ({of})", flag="--experts-per-token")
    if k > reach:
        raise InputError(f"{n} experts is below num_experts_per_tok ({k}): a token could reach only {reach} ({of})",
                         flag="--experts")
    if n // g < 2:  # the router ranks each group by its two best experts (`topk(2)` in transformers)
        raise InputError(f"{n} experts leaves fewer than 2 in each of the {g} routing groups", flag="--experts")


def shape_arch(arch: Architecture, s: Shape) -> Architecture:
    """`arch` with the widths of a resolved shape (layers unchanged)."""
    return arch.with_(**{ax.field: getattr(s, ax.name) for ax in AXES})


# ---------------------------------------------------------------------- ranking (pure)
def top_k(scores, k: int) -> tuple[int, ...]:
    """Indices of the k largest scores (ties: lower index first), in ascending order."""
    import torch

    order = torch.argsort(torch.as_tensor(scores, dtype=torch.float64), descending=True, stable=True)
    return tuple(sorted(order[:k].tolist()))


def grouped_top_k(scores, n_groups: int, k_per_group: int) -> tuple[int, ...]:
    """The top `k_per_group` of each of `n_groups` equal consecutive groups, ascending."""
    n = len(scores)
    size = n // n_groups
    out = []
    for g in range(n_groups):
        out += [g * size + i for i in top_k(scores[g * size:(g + 1) * size], k_per_group)]
    return tuple(out)


def make_plan(arch: Architecture, shape: Shape, scores=None, dropped_layers=(), rotation=None,
              compensation=None) -> PrunePlan:
    """Rank every axis with `scores` (a `Scores`, or None: identity) and keep the top of the target shape.

    `rotation` (`minitron.prune.rotation`): keep the first hidden components of that basis instead of
    the top hidden channels, where the shape cuts the hidden size (a shape that keeps it is left unrotated).
    `compensation` (`minitron.prune.compensation`): refit the output projections whose input is cut.
    """
    return plan_for(arch, validate_shape(arch, shape), scores, dropped_layers, rotation, compensation)


def plan_for(arch: Architecture, s: Shape, scores=None, dropped_layers=(), rotation=None,
             compensation=None) -> PrunePlan:
    """`make_plan` of a shape already resolved and validated (`validate_shape`, as a `Target` holds it)."""
    import torch


    def rows(name: str, n_rows: int, n: int):
        if scores is None:
            return torch.zeros(n_rows, n)
        return scores[name].double()

    a = arch
    plan = PrunePlan(source=a, hidden=top_k(rows("hidden", 1, a.hidden_size).reshape(-1), s.hidden_size),
                     dropped_layers=tuple(sorted(set(dropped_layers))), compensation=compensation)
    if rotation is not None and s.hidden_size < a.hidden_size:
        plan.hidden, plan.rotation = tuple(range(s.hidden_size)), rotation.keep(s.hidden_size)
    mlp = a.ffn_layers()
    ffn_scores = rows("ffn", len(mlp), a.intermediate_size)
    for j, i in enumerate(mlp):
        plan.ffn[i] = top_k(ffn_scores[j], s.ffn_size)
    attn = a.attention_layers()
    q_scores = rows("attention_heads", len(attn), a.num_attention_heads)
    kv_scores = rows("kv_heads", len(attn), a.num_key_value_heads)
    per_group = a.num_attention_heads // a.num_key_value_heads
    keep_per_group = s.attention_heads // s.kv_heads
    for j, i in enumerate(attn):
        groups = top_k(kv_scores[j], s.kv_heads)
        plan.kv_heads[i] = groups
        plan.q_heads[i] = tuple(
            g * per_group + h for g in groups for h in top_k(q_scores[j][g * per_group:(g + 1) * per_group], keep_per_group)
        )
    mamba = a.mamba_layers()
    head_scores = rows("mamba_heads", len(mamba), a.mamba_num_heads)
    dim_scores = rows("mamba_head_dim", len(mamba), a.mamba_head_dim)
    for j, i in enumerate(mamba):
        plan.mamba_heads[i] = grouped_top_k(head_scores[j], a.n_groups, s.mamba_heads // a.n_groups)
        plan.mamba_dims[i] = top_k(dim_scores[j], s.mamba_head_dim)
    moe = a.moe_layers()
    if moe:
        expert_scores = rows("experts", len(moe), a.n_routed_experts)
        neuron_scores = scores["moe_ffn"].double() if scores is not None else \
            torch.zeros(len(moe), a.n_routed_experts, a.moe_intermediate_size)
        shared_scores = rows("shared_expert_ffn", len(moe), a.moe_shared_expert_intermediate_size)
        for j, i in enumerate(moe):
            plan.experts[i] = grouped_top_k(expert_scores[j], a.n_group, s.experts // a.n_group)
            plan.moe_ffn[i] = {e: top_k(neuron_scores[j][e], s.moe_ffn_size) for e in plan.experts[i]}
            plan.shared_ffn[i] = top_k(shared_scores[j], s.shared_expert_ffn_size)
        if s.experts_per_token != a.num_experts_per_tok:
            plan.experts_per_token = s.experts_per_token
    plan.target()  # validates the pattern left (e.g. nothing left)
    return plan


# ---------------------------------------------------------------------- depth (pure)
def drop_sequence(arch: Architecture, order, keep_min: dict[str, int]) -> list[int]:
    """The layers of `order` that may go, in order, skipping those whose type would fall under its minimum
    or that the family can never drop."""
    left = {c: arch.count(c) for c in set(arch.pattern)}
    fixed = arch.impl.fixed_layer_types(arch)
    out = []
    for i in order:
        c = arch.pattern[i]
        if c in fixed or left[c] - 1 < keep_min.get(c, 0):
            continue
        left[c] -= 1
        out.append(i)
    return out


def check_drop(arch: Architecture, dropped, keep_min: dict[str, int], flag: str) -> None:
    if len(set(dropped)) >= arch.num_layers:
        raise InputError("that would drop every layer", flag=flag)
    fixed = arch.impl.fixed_layer_types(arch)
    for i in dropped:
        if arch.pattern[i] in fixed:
            raise InputError(f"layer {i}: {fixed[arch.pattern[i]]}", flag=flag)
    for c, n in keep_min.items():
        left = sum(1 for i, x in enumerate(arch.pattern) if x == c and i not in set(dropped))
        if left < n:
            raise InputError(f"leaves {left} {LAYER_TYPE_NAMES[c]} layer(s); --keep-layer-types asks for {n}", flag=flag)


def least_important(layer_scores, arch: Architecture, keep_min: dict[str, int]) -> list[int]:
    """All layers, least important first (by score, ties: lower index), types protected by `keep_min` last."""
    order = sorted(range(arch.num_layers), key=lambda i: (float(layer_scores[i]), i))
    return drop_sequence(arch, order, keep_min)
