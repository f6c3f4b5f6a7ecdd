"""Candidate architectures under a parameter or memory budget: enumerate, account, keep what fits.

The space is a range per axis (`--search AXIS=MIN:MAX[:STEP]`); depth follows a drop order (the
layer scores, least important first, or `--drop-order`), so `num_layers = n` means "the first
L - n layers of the order are gone". Accounting is pure arithmetic on `Architecture` (no model is
built): for each combination of the other axes one architecture is made, and the three neuron axes
(MLP FFN, routed-expert FFN, shared-expert FFN), which enter the total and the active parameter
counts linearly and independently, are swept with a closed form (checked against the full
accounting in the tests). The 12B paper space (3 x 6 x 111 x 3 candidates) enumerates in well
under a second.

A candidate fits when every target given holds: parameters <= `--target-params`, active parameters
per token <= `--target-active-params`, memory <= the budget.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from minitron.axes import AXES as REGISTRY
from minitron.axes import BY_NAME, NAMES
from minitron.dtypes import DTYPE_BYTES, norm_dtype
from minitron.errors import InfeasibleError, InputError
from minitron.memory import GiB, Serving, prefill_activation_bytes
from minitron.models.architecture import Architecture
from minitron.prune.select import Shape, drop_sequence
from minitron.tensor_parallel import problems as tp_problems

AXES = ("num_layers", *NAMES)  # the search axes: depth, then every axis of the registry
LINEAR = ("ffn_size", "moe_ffn_size", "shared_expert_ffn_size")  # swept in closed form
_ARCH_FIELD = {x: BY_NAME[x].field for x in LINEAR}
EXPERT_STEP = 8
WIDTH_CUT, DEPTH_CUT = 0.4, 0.2


@dataclass(frozen=True)
class Range:
    lo: int
    hi: int
    step: int = 1

    def values(self) -> list[int]:
        return list(range(self.lo, self.hi + 1, self.step))


@dataclass(frozen=True)
class Candidate:
    num_layers: int
    hidden_size: int
    ffn_size: int
    mamba_heads: int
    mamba_head_dim: int
    attention_heads: int
    kv_heads: int
    params: int
    memory_bytes: int
    fits: bool
    dropped_layers: tuple[int, ...] = ()
    experts: int = 0  # 0: the model has no MoE layer
    moe_ffn_size: int = 0
    shared_expert_ffn_size: int = 0
    experts_per_token: int = 0
    active_params: int = 0

    def shape(self) -> Shape:
        # 0 stands for an axis the model does not have (no MLP, Mamba or MoE layer): keep it as is.
        return Shape(*(v or None for v in (self.hidden_size, self.ffn_size, self.mamba_heads, self.mamba_head_dim,
                                           self.attention_heads, self.kv_heads, self.experts, self.moe_ffn_size,
                                           self.shared_expert_ffn_size, self.experts_per_token)))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (*AXES, "params", "active_params", "memory_bytes", "fits")}
        d["memory_gib"] = round(self.memory_bytes / GiB, 4)
        d["dropped_layers"] = sorted(self.dropped_layers)
        return d


def parse_search(items: list[str] | None) -> dict[str, Range]:
    """`["hidden_size=4480:5120:128", "num_layers=52:56:2"]` -> {axis: Range}."""
    out = {}
    for item in items or []:
        axis, sep, spec = item.partition("=")
        axis = axis.strip().replace("-", "_")
        if not sep or axis not in AXES:
            raise InputError(f"expected AXIS=MIN:MAX[:STEP] with AXIS one of {', '.join(AXES)}; got {item!r}",
                             flag="--search")
        try:
            parts = [int(float(p)) for p in spec.split(":")]
        except ValueError:
            raise InputError(f"{item!r}: MIN, MAX and STEP must be integers", flag="--search") from None
        if len(parts) == 1:
            parts = [parts[0], parts[0]]
        if len(parts) not in (2, 3) or parts[0] < 1 or parts[1] < parts[0] or (len(parts) == 3 and parts[2] < 1):
            raise InputError(f"{item!r}: expected 1 <= MIN <= MAX and STEP >= 1", flag="--search")
        out[axis] = Range(*parts)
    return out


def _down(hi: int, step: int, cut: float) -> Range:
    """From `hi` down by `step` while the cut stays within `cut` of `hi` (at least one step above 0)."""
    n = int(hi * cut) // step
    return Range(max(hi - n * step, step if hi > step else hi), hi, step)


def _fixed(v: int) -> Range:
    return Range(v, v) if v else Range(0, 0)


# Hardware-friendly widths: multiples of 128 suit GEMM tiles and leave every tensor-parallel split a
# whole number of 16-wide tiles up to TP 8. A model too narrow for three cuts of 128 within the width
# cut (the bundled demo, the test models) falls to 64, 32, 16, then 8.
WIDTH_STEPS = (128, 64, 32, 16, 8)
MIN_CUTS = 3  # values below the model's own width that a default range should hold


def width_range(hi: int, cut: float = WIDTH_CUT, *, multiple: int = 1) -> Range:
    """`hi` down to a `cut` fraction in multiples of the largest of `WIDTH_STEPS` (each raised to a
    multiple of `multiple`, e.g. the TP size) that divides `hi` and leaves `MIN_CUTS` cuts; when none
    does, the smallest such step from `hi` down (the values are then as aligned as `hi` is)."""
    steps = [math.lcm(s, multiple) for s in WIDTH_STEPS]
    for s in steps:
        if hi % s == 0 and int(hi * cut) // s >= MIN_CUTS:
            return _down(hi, s, cut)
    return _down(hi, steps[-1], cut)


def depth_range(num_layers: int, cut: float = DEPTH_CUT) -> Range:
    """Layers down to a `cut` fraction in steps of 2 (a Mamba/attention pair, as the paper removed them)
    when the cut holds at least two such steps; in steps of 1 for a shallower model."""
    k = int(num_layers * cut)
    step = 2 if k >= 4 else 1
    return Range(num_layers - k // step * step, num_layers, step)


def default_space(arch: Architecture, *, depth: bool, tensor_parallel: int = 1) -> dict[str, Range]:
    """Width cut <= 40 % in hardware-friendly steps (`width_range`: hidden, FFN, expert widths; Mamba
    heads in multiples of lcm(groups, TP)); depth <= 20 % in steps of 2 (`depth_range`) when a drop
    order exists; head dim, query and KV heads are kept unless searched explicitly."""
    a = arch
    L = a.num_layers
    tp = tensor_parallel
    space = {
        "num_layers": depth_range(L) if depth else Range(L, L),
        "hidden_size": width_range(a.hidden_size),  # vLLM does not split the hidden size (no TP rule)
        "ffn_size": width_range(a.intermediate_size, multiple=tp) if a.ffn_layers() else _fixed(a.intermediate_size),
        # vLLM splits heads and groups alike over TP: heads % groups and heads % TP are what it asserts
        "mamba_heads": _down(a.mamba_num_heads, math.lcm(a.n_groups, tp), WIDTH_CUT) if a.mamba_layers()
        else _fixed(a.mamba_num_heads),
        "mamba_head_dim": Range(a.mamba_head_dim, a.mamba_head_dim),
        "attention_heads": Range(a.num_attention_heads, a.num_attention_heads),
        "kv_heads": Range(a.num_key_value_heads, a.num_key_value_heads),
        **_moe_space(a, tp),
    }
    for axis in a.impl.unsupported_axes(a):  # an axis the family cannot cut soundly stays whole
        if axis in space:
            space[axis] = _fixed(space[axis].hi)
    return space


def _moe_space(a: Architecture, tp: int = 1) -> dict[str, Range]:
    """Experts down to a 40 % cut in steps of 8 (rounded to the routing groups); expert and shared-expert
    widths like the FFN; top-k kept (it changes the function: only ever searched explicitly)."""
    if not a.moe_layers():
        return {k: Range(0, 0) for k in ("experts", "moe_ffn_size", "shared_expert_ffn_size", "experts_per_token")}
    step = math.lcm(EXPERT_STEP, a.n_group)
    return {
        "experts": _down(a.n_routed_experts, step, WIDTH_CUT),
        "moe_ffn_size": width_range(a.moe_intermediate_size, multiple=tp),
        "shared_expert_ffn_size": width_range(a.moe_shared_expert_intermediate_size, multiple=tp),
        "experts_per_token": Range(a.num_experts_per_tok, a.num_experts_per_tok),
    }


def check_space(arch: Architecture, space: dict[str, Range]) -> None:
    a = arch
    limits = {"num_layers": a.num_layers, **{ax.name: ax.size(a) for ax in REGISTRY}}
    limits["experts_per_token"] = a.n_routed_experts  # top-k may rise up to the experts
    refused = a.impl.unsupported_axes(a)
    for axis, r in space.items():
        if axis in BY_NAME and BY_NAME[axis].component == "moe" and r.hi and not a.moe_layers():
            raise InputError(f"{axis}: this {a.family} model has no MoE layer", flag="--search")
        if r.hi > limits[axis]:
            raise InputError(f"{axis} max {r.hi} is larger than the model's {limits[axis]}", flag="--search")
        keep = a.num_experts_per_tok if axis == "experts_per_token" else limits[axis]  # the model's own value
        if axis in refused and r.hi and (r.lo, r.hi) != (keep, keep):  # (0, 0): the axis is absent
            raise InputError(f"{axis} cannot be cut: {refused[axis]}", flag="--search")
    bad = [v for v in space["mamba_heads"].values() if a.mamba_num_heads and v % a.n_groups]
    if bad:
        raise InputError(f"mamba_heads {bad[0]} is not a multiple of the model's {a.n_groups} groups "
                         f"(use a step of {a.n_groups})", flag="--search")
    bad = [v for v in space["experts"].values() if a.moe_layers() and v % a.n_group]
    if bad:
        raise InputError(f"experts {bad[0]} is not a multiple of the model's {a.n_group} routing groups "
                         f"(use a step of {a.n_group})", flag="--search")


def routable(a: Architecture, experts: int, k: int) -> bool:
    """Whether `experts` kept experts in `n_group` groups can serve top-`k` routing (see select._check_routing)."""
    per = experts // a.n_group
    return experts % a.n_group == 0 and per >= 2 and k <= a.topk_group * per


def enumerate_candidates(arch: Architecture, space: dict[str, Range], *, drop_order: list[int] | None,
                         keep_min: dict[str, int] | None = None, target=None) -> list[Candidate]:
    """Every valid candidate of the space with its parameters (total, active), memory and whether it meets
    every limit of `target` (a `minitron.prune.target.Target`; None: the default `Serving`, no limit)."""
    a = arch
    serving = target.serving if target is not None else Serving()
    tensor_parallel = serving.tensor_parallel
    check_space(a, space)
    seq = drop_sequence(a, drop_order or [], keep_min or {})
    per_group = a.num_attention_heads // a.num_key_value_heads
    bytes_per = DTYPE_BYTES[norm_dtype(serving.dtype)]
    others = ("hidden_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads", "experts",
              "experts_per_token")
    linear = list(itertools.product(*(space[x].values() for x in LINEAR)))
    out = []
    for n in space["num_layers"].values():
        k = a.num_layers - n
        if k > len(seq):
            continue  # the order (with --keep-layer-types) cannot drop that many
        dropped = tuple(sorted(seq[:k]))
        pattern = "".join(c for i, c in enumerate(a.pattern) if i not in set(dropped))
        types = None if a.layer_types is None else tuple(t for i, t in enumerate(a.layer_types) if i not in set(dropped))
        for h, mh, mhd, q, kv, ne, topk in itertools.product(*(space[x].values() for x in others)):
            if q % kv or q // kv > per_group or (ne and not routable(a, ne, topk)):
                continue
            first = dict(zip(LINEAR, linear[0], strict=True))
            base = a.with_(pattern=pattern, layer_types=types, hidden_size=h,
                           mamba_num_heads=mh or a.mamba_num_heads, mamba_head_dim=mhd or a.mamba_head_dim,
                           num_attention_heads=q, num_key_value_heads=kv,
                           n_routed_experts=ne or a.n_routed_experts, num_experts_per_tok=topk or a.num_experts_per_tok,
                           **{_ARCH_FIELD[x]: v or getattr(a, _ARCH_FIELD[x]) for x, v in first.items()})
            if a.impl.target_problem(a, base):  # e.g. a Mamba width the family's config cannot express
                continue
            p0, act0 = base.total_params, base.total_active_params
            # Each neuron axis is linear in both counts (any family): the cost of one more neuron everywhere.
            per_unit = {}
            for x, v0 in first.items():
                if v0:
                    one_more = base.with_(**{_ARCH_FIELD[x]: getattr(base, _ARCH_FIELD[x]) + 1})
                    per_unit[x] = (one_more.total_params - p0, one_more.total_active_params - act0)
                else:
                    per_unit[x] = (0, 0)
            est0 = serving.estimate(base, params=0)
            act_bytes = DTYPE_BYTES["bf16" if est0.dtype == "fp8" else est0.dtype]
            by_ffn = {}  # FFN width -> (shardable, extra prefill bytes): the same for every other linear width
            for values in linear:
                widths = dict(zip(LINEAR, values, strict=True))
                f = widths["ffn_size"]
                if f not in by_ffn:
                    by_ffn[f] = _ffn_terms(base, f, est0, act_bytes, tensor_parallel)
                shardable, extra_prefill = by_ffn[f]
                if not shardable:
                    continue  # a width vLLM cannot shard over the GPUs
                params = p0 + sum(per_unit[x][0] * (v - first[x]) for x, v in widths.items())
                active = act0 + sum(per_unit[x][1] * (v - first[x]) for x, v in widths.items())
                mem = est0.total_bytes + -(-params * bytes_per // tensor_parallel) + extra_prefill
                fits = target is None or target.fits(params, active, mem)
                out.append(Candidate(n, h, f or a.intermediate_size, mh, mhd, q, kv, params, mem, fits,
                                     dropped, experts=ne, moe_ffn_size=widths["moe_ffn_size"],
                                     shared_expert_ffn_size=widths["shared_expert_ffn_size"], experts_per_token=topk,
                                     active_params=active))
    return out


def _ffn_terms(base, f: int, est0, act_bytes: int, tensor_parallel: int) -> tuple[bool, int]:
    """Whether FFN width `f` (0: the model's) shards over the GPUs, and the prefill bytes it adds to `est0`'s."""
    if tensor_parallel > 1 and tp_problems(base.with_(intermediate_size=f or base.intermediate_size), tensor_parallel):
        return False, 0
    if not f or f == base.intermediate_size or not base.ffn_layers():
        return True, 0
    # the MLP's prefill tensors grow with f
    return True, prefill_activation_bytes(base, est0.prefill_tokens, act_bytes, tensor_parallel,
                                          intermediate_size=f) - est0.prefill_activation_bytes


def rank_by_params(cands: list[Candidate]) -> list[Candidate]:
    """Feasible candidates, largest first (closest to the budget), ties: deeper, then wider hidden."""
    return sorted((c for c in cands if c.fits),
                  key=lambda c: (-c.params, -c.num_layers, -c.hidden_size, -c.mamba_heads, -c.ffn_size))


def require_feasible(cands: list[Candidate], target) -> None:
    """Raise (exit 3) when no candidate meets every limit of `target`, naming the one the space cannot reach."""
    budget, target_params, target_active_params = target.budget, target.params, target.active_params
    if not cands:
        raise InputError("the search space is empty (check --search and --drop-order / --keep-layer-types)",
                         flag="--search")
    if any(c.fits for c in cands):
        return
    gib = lambda v: f"{v / GiB:.2f} GiB"  # noqa: E731
    targets = []  # (flag, what fitting means, figure of a candidate, limit, how a figure prints, what to raise)
    if budget is not None:
        targets.append(("--memory-budget" if budget.gpu is None else "--gpu", f"fits {gib(budget.budget_bytes)}",
                        lambda c: c.memory_bytes, budget.budget_bytes, gib, "the budget"))
    if target_params is not None:
        targets.append(("--target-params", f"has <= {target_params:,} parameters", lambda c: c.params,
                        target_params, lambda v: f"{v:,}", "the target"))
    if target_active_params is not None:
        targets.append(("--target-active-params", f"has <= {target_active_params:,} active parameters per token",
                        lambda c: c.active_params, target_active_params, lambda v: f"{v:,}", "the target"))
    for flag, what, figure, limit, show, raise_ in targets:
        smallest = min(cands, key=figure)
        if figure(smallest) > limit:
            raise InfeasibleError(f"no candidate {what}: the smallest the search space reaches is "
                                  f"{show(figure(smallest))} ({_where(smallest)}); widen --search or raise {raise_}",
                                  flag=flag)
    flags = " and ".join(t[0] for t in targets)
    raise InfeasibleError(f"each target alone is reachable but no candidate meets {flags} together; "
                          "widen --search or raise a target", flag=targets[0][0])


def _where(c: Candidate) -> str:
    return (f"{c.num_layers} layers, hidden {c.hidden_size}, ffn {c.ffn_size}"
            + (f", {c.mamba_heads} Mamba heads" if c.mamba_heads else "")
            + (f", {c.experts} experts x {c.moe_ffn_size}, shared {c.shared_expert_ffn_size}, top-{c.experts_per_token}"
               if c.experts else ""))


def parse_params(text: str, flag: str = "--target-params") -> int:
    """`9B`, `8.9e9`, `8888227328`, `750M` -> an integer parameter count."""
    t = str(text).strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise InputError(f"cannot read {text!r} as a parameter count (e.g. 9B, 8.9e9, 8888227328)",
                         flag=flag) from None
    if not math.isfinite(value) or value < 1:
        raise InputError(f"must be positive, got {text!r}", flag=flag)
    return int(round(value))
