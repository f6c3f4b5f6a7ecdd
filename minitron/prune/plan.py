"""`PrunePlan`: which units of every axis a pruned model keeps, and the per-tensor index lists.

A plan is plain data over the *source* architecture (indices are original indices, layers are
original 0-based block numbers):

    hidden          kept hidden channels (global)
    ffn[l]          kept neurons of MLP layer l
    q_heads[l]      kept query heads of attention layer l (uniform count per kept KV group)
    kv_heads[l]     kept KV heads (groups) of attention layer l
    mamba_heads[l]  kept heads of Mamba layer l (same count in each of n_groups groups)
    mamba_dims[l]   kept channels of every head of Mamba layer l (the same in each head)
    dropped_layers  whole blocks removed

`tensor_indices(spec, plan)` turns it into, for each dimension of a tensor, the kept indices: the
concatenation over the dimension's segments (tensors.py) of that segment's kept indices, offset by
the sizes of the segments before it. It is the one function both the in-memory apply and the
shard-by-shard streaming apply use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minitron.models.architecture import Architecture
from minitron.models.tensors import FFN, FIXED, HIDDEN, KV, MAMBA_HEADS, MAMBA_INNER, Q, TensorSpec

Index = tuple[int, ...]


@dataclass
class PrunePlan:
    source: Architecture
    hidden: Index
    ffn: dict[int, Index] = field(default_factory=dict)
    q_heads: dict[int, Index] = field(default_factory=dict)
    kv_heads: dict[int, Index] = field(default_factory=dict)
    mamba_heads: dict[int, Index] = field(default_factory=dict)
    mamba_dims: dict[int, Index] = field(default_factory=dict)
    dropped_layers: tuple[int, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def keep_all(cls, arch: Architecture) -> PrunePlan:
        a = arch
        return cls(
            source=a,
            hidden=tuple(range(a.hidden_size)),
            ffn={i: tuple(range(a.intermediate_size)) for i in a.ffn_layers()},
            q_heads={i: tuple(range(a.num_attention_heads)) for i in a.attention_layers()},
            kv_heads={i: tuple(range(a.num_key_value_heads)) for i in a.attention_layers()},
            mamba_heads={i: tuple(range(a.mamba_num_heads)) for i in a.mamba_layers()},
            mamba_dims={i: tuple(range(a.mamba_head_dim)) for i in a.mamba_layers()},
        )

    # ------------------------------------------------------------------ facts
    def kept_layers(self) -> list[int]:
        dropped = set(self.dropped_layers)
        return [i for i in range(self.source.num_layers) if i not in dropped]

    def new_index(self) -> dict[int, int]:
        """Original block number -> block number in the pruned model."""
        return {old: new for new, old in enumerate(self.kept_layers())}

    def target(self) -> Architecture:
        """The pruned architecture (validated: every per-layer axis keeps the same count in each layer)."""
        a, kept = self.source, self.kept_layers()

        def count(per_layer: dict[int, Index], default: int, what: str) -> int:
            sizes = {len(per_layer[i]) for i in kept if i in per_layer}
            if len(sizes) > 1:
                raise ValueError(f"plan keeps different {what} counts in different layers: {sorted(sizes)}")
            return sizes.pop() if sizes else default

        pattern = "".join(a.pattern[i] for i in kept)
        return a.with_(
            pattern=pattern,
            layer_types=None if a.layer_types is None else tuple(a.layer_types[i] for i in kept),
            hidden_size=len(self.hidden),
            intermediate_size=count(self.ffn, a.intermediate_size, "FFN neuron"),
            num_attention_heads=count(self.q_heads, a.num_attention_heads, "query head"),
            num_key_value_heads=count(self.kv_heads, a.num_key_value_heads, "KV head"),
            mamba_num_heads=count(self.mamba_heads, a.mamba_num_heads, "Mamba head"),
            mamba_head_dim=count(self.mamba_dims, a.mamba_head_dim, "Mamba head-dim"),
        )

    def summary(self) -> dict:
        """The `plan` object of `prune --json`."""
        t = self.target()
        return {
            "hidden_size": t.hidden_size,
            "ffn_size": t.intermediate_size,
            "mamba_heads": t.mamba_num_heads,
            "mamba_head_dim": t.mamba_head_dim,
            "attention_heads": t.num_attention_heads,
            "kv_heads": t.num_key_value_heads,
            "num_layers": t.num_layers,
            "dropped_layers": sorted(self.dropped_layers),
            "pattern": t.pattern,
        }

    def indices(self) -> dict:
        """The kept indices themselves (recorded in minitron.json)."""
        return {
            "hidden": list(self.hidden),
            "ffn": {str(k): list(v) for k, v in self.ffn.items()},
            "q_heads": {str(k): list(v) for k, v in self.q_heads.items()},
            "kv_heads": {str(k): list(v) for k, v in self.kv_heads.items()},
            "mamba_heads": {str(k): list(v) for k, v in self.mamba_heads.items()},
            "mamba_head_dim": {str(k): list(v) for k, v in self.mamba_dims.items()},
            "dropped_layers": sorted(self.dropped_layers),
        }


# ---------------------------------------------------------------------- per-tensor indices
def segment_indices(plan: PrunePlan, axis: str, layer: int | None, size: int) -> list[int] | None:
    """Kept indices (0-based within the segment) of one segment, or None when it keeps all `size`."""
    a = plan.source
    if axis == FIXED:
        return None
    if axis == HIDDEN:
        kept = list(plan.hidden)
    elif axis == FFN:
        kept = list(plan.ffn[layer])
    elif axis in (Q, KV):
        heads = plan.q_heads[layer] if axis == Q else plan.kv_heads[layer]
        d = a.head_dim
        kept = [h * d + c for h in heads for c in range(d)]  # head-major: [heads, head_dim]
    elif axis == MAMBA_INNER:
        p = a.mamba_head_dim
        kept = [h * p + c for h in plan.mamba_heads[layer] for c in plan.mamba_dims[layer]]  # [H, P]
    elif axis == MAMBA_HEADS:
        kept = list(plan.mamba_heads[layer])
    else:  # pragma: no cover - tensors.py declares no other axis
        raise ValueError(axis)
    return None if kept == list(range(size)) else kept


def tensor_indices(spec: TensorSpec, plan: PrunePlan) -> tuple[list[int] | None, ...]:
    """For each dimension of `spec`, the kept indices (None: the dimension is kept whole)."""
    out = []
    for segs in spec.dims:
        parts, offset, whole = [], 0, True
        for axis, size in segs:
            kept = segment_indices(plan, axis, spec.layer, size)
            if kept is None:
                kept = range(size)
            else:
                whole = False
            parts.extend(offset + k for k in kept)
            offset += size
        out.append(None if whole else parts)
    return tuple(out)


def pruned_shape(spec: TensorSpec, idx: tuple[list[int] | None, ...]) -> tuple[int, ...]:
    return tuple(n if ix is None else len(ix) for n, ix in zip(spec.shape, idx, strict=True))
