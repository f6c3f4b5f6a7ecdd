"""`PrunePlan`: which units of every axis a pruned model keeps, and the per-tensor index lists.

A plan is plain data over the *source* architecture (indices are original indices, layers are
original 0-based block numbers):

    hidden          kept hidden channels (global)
    ffn[l]          kept neurons of MLP layer l
    q_heads[l]      kept query heads of attention layer l (uniform count per kept KV group)
    kv_heads[l]     kept KV heads (groups) of attention layer l
    mamba_heads[l]  kept heads of Mamba layer l (same count in each of n_groups groups)
    mamba_dims[l]   kept channels of every head of Mamba layer l (the same in each head)
    experts[l]      kept routed experts of MoE layer l (same count in each of n_group routing groups)
    moe_ffn[l][e]   kept neurons of routed expert e of MoE layer l (each expert its own; same count)
    shared_ffn[l]   kept neurons of the shared expert of MoE layer l
    experts_per_token  the router's new top-k (None: unchanged); a scalar, not an index set
    dropped_layers  whole blocks removed
    rotation        None, or the principal basis of the residual stream (`rotation.py`): hidden
                    then holds the first k components, and every hidden dimension is kept whole
                    here and contracted to k by `rotation.apply`
    compensation    None, or the least-squares refit of the output projections whose input is cut
                    (`compensation.py`): applied by both applies in place of the column cut

Kept experts are renumbered in order (checkpoint keys `experts.{j}.` are rewritten, like layers).

`tensor_indices(spec, plan)` turns it into, for each dimension of a tensor, the kept indices: the
concatenation over the dimension's segments (tensors.py) of that segment's kept indices, offset by
the sizes of the segments before it. It is the one function both the in-memory apply and the
shard-by-shard streaming apply use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minitron.axes import AXES, SCORED
from minitron.models.architecture import Architecture
from minitron.models.tensors import (
    EXPERTS,
    FFN,
    FIXED,
    HIDDEN,
    KV,
    MAMBA_HEADS,
    MAMBA_INNER,
    MOE_FFN,
    SHARED_FFN,
    Q,
    TensorSpec,
)

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
    experts: dict[int, Index] = field(default_factory=dict)
    moe_ffn: dict[int, dict[int, Index]] = field(default_factory=dict)
    shared_ffn: dict[int, Index] = field(default_factory=dict)
    experts_per_token: int | None = None
    dropped_layers: tuple[int, ...] = ()
    rotation: object | None = None  # a minitron.prune.rotation.HiddenRotation
    compensation: object | None = None  # a minitron.prune.compensation.Compensation

    # ------------------------------------------------------------------ construction
    @classmethod
    def keep_all(cls, arch: Architecture) -> PrunePlan:
        a = arch
        plan = cls(source=a, hidden=tuple(range(a.hidden_size)))
        for ax in SCORED[1:]:
            every = tuple(range(ax.size(a)))
            per_layer = getattr(plan, ax.plan)
            for i in ax.layers(a):
                per_layer[i] = {e: every for e in range(a.n_routed_experts)} if ax.per_expert else every
        return plan

    # ------------------------------------------------------------------ facts
    def kept_layers(self) -> list[int]:
        dropped = set(self.dropped_layers)
        return [i for i in range(self.source.num_layers) if i not in dropped]

    def new_index(self) -> dict[int, int]:
        """Original block number -> block number in the pruned model."""
        return {old: new for new, old in enumerate(self.kept_layers())}

    def new_expert_index(self, layer: int) -> dict[int, int]:
        """Original routed-expert number -> its number in the pruned MoE layer."""
        return {old: new for new, old in enumerate(self.experts[layer])}

    def target(self) -> Architecture:
        """The pruned architecture (validated: every per-layer axis keeps the same count in each layer)."""
        a, kept = self.source, self.kept_layers()

        def count(per_layer: dict, default: int, what: str) -> int:
            sizes = {len(v) for v in per_layer.values()}
            if len(sizes) > 1:
                raise ValueError(f"plan keeps different {what} counts in different layers: {sorted(sizes)}")
            return sizes.pop() if sizes else default

        def kept_only(per_layer: dict) -> dict:
            return {i: v for i, v in per_layer.items() if i in kept}

        pattern = "".join(a.pattern[i] for i in kept)
        counts = {}
        for ax in SCORED[1:]:
            per_layer = getattr(self, ax.plan)
            if ax.per_expert:  # every kept expert of every kept MoE layer, as one "layer" each
                per_layer = {(i, e): per_layer[i][e] for i in kept if i in self.experts for e in self.experts[i]}
            else:
                per_layer = kept_only(per_layer)
            counts[ax.field] = count(per_layer, ax.size(a), ax.label)
        return a.with_(
            pattern=pattern,
            layer_types=None if a.layer_types is None else tuple(a.layer_types[i] for i in kept),
            hidden_size=len(self.hidden),
            num_experts_per_tok=self.experts_per_token or a.num_experts_per_tok,
            **counts,
        )

    def summary(self) -> dict:
        """The `plan` object of `prune --json`: every axis' pruned size (0: the model has none of its layers)."""
        t = self.target()
        out = {ax.name: (ax.size(t) if ax.component != "moe" or ax.present(t) else 0) for ax in AXES}
        return {**out, "num_layers": t.num_layers, "dropped_layers": sorted(self.dropped_layers), "pattern": t.pattern}

    def indices(self) -> dict:
        """The kept indices themselves (recorded in minitron.json)."""
        return {
            "hidden": list(self.hidden),
            "ffn": {str(k): list(v) for k, v in self.ffn.items()},
            "q_heads": {str(k): list(v) for k, v in self.q_heads.items()},
            "kv_heads": {str(k): list(v) for k, v in self.kv_heads.items()},
            "mamba_heads": {str(k): list(v) for k, v in self.mamba_heads.items()},
            "mamba_head_dim": {str(k): list(v) for k, v in self.mamba_dims.items()},
            "experts": {str(k): list(v) for k, v in self.experts.items()},
            "moe_ffn": {str(k): {str(e): list(self.moe_ffn[k][e]) for e in v} for k, v in self.experts.items()},
            "shared_expert_ffn": {str(k): list(v) for k, v in self.shared_ffn.items()},
            "experts_per_token": self.experts_per_token,
            "dropped_layers": sorted(self.dropped_layers),
            "hidden_basis": self.rotation.record() if self.rotation is not None else "channels",
        }


# ---------------------------------------------------------------------- per-tensor indices
def segment_indices(plan: PrunePlan, axis: str, layer: int | None, size: int,
                    expert: int | None = None) -> list[int] | None:
    """Kept indices (0-based within the segment) of one segment, or None when it keeps all `size`."""
    a = plan.source
    if axis == FIXED:
        return None
    if axis == HIDDEN:
        if plan.rotation is not None:
            return None  # contracted to k components by the rotation (after the other dimensions' cut)
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
    elif axis == EXPERTS:
        kept = list(plan.experts[layer])
    elif axis == MOE_FFN:  # neurons of routed expert `expert` (each expert keeps its own)
        kept = list(plan.moe_ffn[layer][expert])
    elif axis == SHARED_FFN:
        kept = list(plan.shared_ffn[layer])
    else:  # pragma: no cover - tensors.py declares no other axis
        raise ValueError(axis)
    return None if kept == list(range(size)) else kept


def tensor_indices(spec: TensorSpec, plan: PrunePlan) -> tuple[list[int] | None, ...]:
    """For each dimension of `spec`, the kept indices (None: the dimension is kept whole).

    A `stacked` spec (fused experts) is not a product of per-dimension cuts: use `stacked_indices`.
    """
    if spec.stacked:
        raise ValueError(f"{spec.name}: stacked per-expert tensor, use stacked_indices()")
    out = []
    for segs in spec.dims:
        parts, offset, whole = [], 0, True
        for axis, size in segs:
            kept = segment_indices(plan, axis, spec.layer, size, spec.expert)
            if kept is None:
                kept = range(size)
            else:
                whole = False
            parts.extend(offset + k for k in kept)
            offset += size
        out.append(None if whole else parts)
    return tuple(out)


def stacked_indices(spec: TensorSpec, plan: PrunePlan) -> list[tuple[int, tuple[list[int] | None, ...]]]:
    """Of a `stacked` [E, ...] spec: (original expert j, `tensor_indices` of its slice) per kept expert, in order."""
    (axis, n), = spec.dims[0]
    kept = segment_indices(plan, axis, spec.layer, n)
    return [(j, tensor_indices(spec.expert_slice(j), plan)) for j in (range(n) if kept is None else kept)]


def pruned_shape(spec: TensorSpec, idx: tuple[list[int] | None, ...], plan: PrunePlan | None = None) -> tuple[int, ...]:
    """The shape after the cut; with a plan that rotates, hidden dimensions hold its k components."""
    out = tuple(n if ix is None else len(ix) for n, ix in zip(spec.shape, idx, strict=True))
    if plan is None or plan.rotation is None:
        return out
    return tuple(len(plan.hidden) if any(a == HIDDEN for a, _ in segs) else n for n, segs in zip(out, spec.dims, strict=True))
