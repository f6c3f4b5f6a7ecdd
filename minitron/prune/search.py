"""Candidate architectures under a parameter or memory budget: enumerate, account, keep what fits.

The space is a range per axis (`--search AXIS=MIN:MAX[:STEP]`); depth follows a drop order (the
layer scores, least important first, or `--drop-order`), so `num_layers = n` means "the first
L - n layers of the order are gone". Accounting is pure arithmetic on `Architecture` (no model is
built): for each combination of the non-FFN axes one architecture is made, and the FFN axis, which
enters the parameter count linearly, is swept with a closed form (checked against the full
accounting in the tests). The 12B paper space (3 x 6 x 111 x 3 candidates) enumerates in well
under a second.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from minitron.errors import InfeasibleError, InputError
from minitron.memory import DTYPE_BYTES, Budget, GiB, estimate, norm_dtype, prefill_activation_bytes
from minitron.models.architecture import Architecture
from minitron.prune.select import Shape, drop_sequence
from minitron.tensor_parallel import problems as tp_problems

AXES = ("num_layers", "hidden_size", "ffn_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads")
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

    def shape(self) -> Shape:
        # 0 stands for an axis the model does not have (no MLP or no Mamba layer): keep it as is.
        return Shape(*(v or None for v in (self.hidden_size, self.ffn_size, self.mamba_heads, self.mamba_head_dim,
                                           self.attention_heads, self.kv_heads)))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (*AXES, "params", "memory_bytes", "fits")}
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


def default_space(arch: Architecture, *, depth: bool) -> dict[str, Range]:
    """Width cut <= 40 % in multiples of 64 (hidden, FFN) or of the groups (Mamba heads); depth <= 20 %
    when a drop order exists; head dim, query and KV heads are kept unless searched explicitly."""
    a = arch
    L = a.num_layers
    return {
        "num_layers": Range(L - int(L * DEPTH_CUT), L) if depth else Range(L, L),
        "hidden_size": _down(a.hidden_size, 64, WIDTH_CUT),
        "ffn_size": _down(a.intermediate_size, 64, WIDTH_CUT) if a.ffn_layers() else _fixed(a.intermediate_size),
        "mamba_heads": _down(a.mamba_num_heads, a.n_groups, WIDTH_CUT) if a.mamba_layers()
        else _fixed(a.mamba_num_heads),
        "mamba_head_dim": Range(a.mamba_head_dim, a.mamba_head_dim),
        "attention_heads": Range(a.num_attention_heads, a.num_attention_heads),
        "kv_heads": Range(a.num_key_value_heads, a.num_key_value_heads),
    }


def check_space(arch: Architecture, space: dict[str, Range]) -> None:
    a = arch
    limits = {"num_layers": a.num_layers, "hidden_size": a.hidden_size, "ffn_size": a.intermediate_size,
              "mamba_heads": a.mamba_num_heads, "mamba_head_dim": a.mamba_head_dim,
              "attention_heads": a.num_attention_heads, "kv_heads": a.num_key_value_heads}  # fmt: skip
    for axis, r in space.items():
        if r.hi > limits[axis]:
            raise InputError(f"{axis} max {r.hi} is larger than the model's {limits[axis]}", flag="--search")
    bad = [v for v in space["mamba_heads"].values() if a.mamba_num_heads and v % a.n_groups]
    if bad:
        raise InputError(f"mamba_heads {bad[0]} is not a multiple of the model's {a.n_groups} groups "
                         f"(use a step of {a.n_groups})", flag="--search")


def enumerate_candidates(
    arch: Architecture,
    space: dict[str, Range],
    *,
    drop_order: list[int] | None,
    keep_min: dict[str, int] | None = None,
    budget: Budget | None = None,
    target_params: int | None = None,
    context_length: int = 131072,
    batch_size: int = 1,
    dtype: str = "bf16",
    state_dtype: str | None = None,
    engine: str = "vllm",
    kv_dtype: str | None = None,
    prefill_chunk: int | None = None,
    tensor_parallel: int = 1,
) -> list[Candidate]:
    """Every valid candidate of the space with its parameters, memory and whether it fits."""
    a = arch
    check_space(a, space)
    seq = drop_sequence(a, drop_order or [], keep_min or {})
    per_group = a.num_attention_heads // a.num_key_value_heads
    out = []
    for n in space["num_layers"].values():
        k = a.num_layers - n
        if k > len(seq):
            continue  # the order (with --keep-layer-types) cannot drop that many
        dropped = tuple(sorted(seq[:k]))
        pattern = "".join(c for i, c in enumerate(a.pattern) if i not in set(dropped))
        types = None if a.layer_types is None else tuple(t for i, t in enumerate(a.layer_types) if i not in set(dropped))
        combos = itertools.product(*(space[x].values() for x in
                                     ("hidden_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads")))
        for h, mh, mhd, q, kv in combos:
            if q % kv or q // kv > per_group:
                continue
            ffns = space["ffn_size"].values()
            base = a.with_(pattern=pattern, layer_types=types, hidden_size=h,
                           intermediate_size=ffns[0] or a.intermediate_size,
                           mamba_num_heads=mh or a.mamba_num_heads, mamba_head_dim=mhd or a.mamba_head_dim,
                           num_attention_heads=q, num_key_value_heads=kv)
            if a.impl.target_problem(a, base):  # e.g. a Mamba width the family's config cannot express
                continue
            p0 = base.total_params
            # The FFN axis is linear in the parameters (any family): the cost of one neuron in every FFN layer.
            per_neuron = base.with_(intermediate_size=base.intermediate_size + 1).total_params - p0 \
                if base.ffn_layers() else 0
            est0 = estimate(base, context_length=context_length, batch_size=batch_size, dtype=dtype,
                            state_dtype=state_dtype, params=0, engine=engine, kv_dtype=kv_dtype,
                            prefill_chunk=prefill_chunk, tensor_parallel=tensor_parallel)
            bytes_per = DTYPE_BYTES[norm_dtype(dtype)]
            act_bytes = DTYPE_BYTES["bf16" if est0.dtype == "fp8" else est0.dtype]
            for f in ffns:
                if tensor_parallel > 1 and tp_problems(base.with_(intermediate_size=f or base.intermediate_size),
                                                       tensor_parallel):
                    continue  # a width vLLM cannot shard over the GPUs
                params = p0 + per_neuron * (f - ffns[0]) if f else p0
                mem = est0.total_bytes + -(-params * bytes_per // tensor_parallel)
                if f and f != base.intermediate_size and base.ffn_layers():  # the MLP's prefill tensors grow with f
                    mem += prefill_activation_bytes(base.with_(intermediate_size=f), est0.prefill_tokens,
                                                    act_bytes, tensor_parallel) - est0.prefill_activation_bytes
                if budget is not None:
                    fits = mem <= budget.budget_bytes
                elif target_params is not None:
                    fits = params <= target_params
                else:
                    fits = True
                out.append(Candidate(n, h, f or a.intermediate_size, mh, mhd, q, kv, params, mem, fits, dropped))
    return out


def rank_by_params(cands: list[Candidate]) -> list[Candidate]:
    """Feasible candidates, largest first (closest to the budget), ties: deeper, then wider hidden."""
    return sorted((c for c in cands if c.fits),
                  key=lambda c: (-c.params, -c.num_layers, -c.hidden_size, -c.mamba_heads, -c.ffn_size))


def require_feasible(cands: list[Candidate], *, budget: Budget | None, target_params: int | None) -> None:
    if not cands:
        raise InputError("the search space is empty (check --search and --drop-order / --keep-layer-types)",
                         flag="--search")
    if any(c.fits for c in cands):
        return
    smallest = min(cands, key=lambda c: c.memory_bytes if budget is not None else c.params)
    where = (f"{smallest.num_layers} layers, hidden {smallest.hidden_size}, ffn {smallest.ffn_size}"
             + (f", {smallest.mamba_heads} Mamba heads" if smallest.mamba_heads else ""))
    if budget is not None:
        raise InfeasibleError(
            f"no candidate fits {budget.budget_bytes / GiB:.2f} GiB: the smallest the search space reaches is "
            f"{smallest.memory_bytes / GiB:.2f} GiB ({where}); widen --search or raise the budget",
            flag="--memory-budget" if budget.gpu is None else "--gpu",
        )
    raise InfeasibleError(
        f"no candidate has <= {target_params:,} parameters: the smallest the search space reaches is "
        f"{smallest.params:,} ({where}); widen --search or raise the target",
        flag="--target-params",
    )


def parse_params(text: str) -> int:
    """`9B`, `8.9e9`, `8888227328`, `750M` -> an integer parameter count."""
    t = str(text).strip().upper().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise InputError(f"cannot read {text!r} as a parameter count (e.g. 9B, 8.9e9, 8888227328)",
                         flag="--target-params") from None
    if not math.isfinite(value) or value < 1:
        raise InputError(f"must be positive, got {text!r}", flag="--target-params")
    return int(round(value))
