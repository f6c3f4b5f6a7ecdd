"""Which tensor belongs to which prunable axis: the coupled groups, written out once per family.

Every tensor of a checkpoint is described by a `TensorSpec`: its shape and, for each dimension, the
ordered *segments* that make it up. A segment is `(axis, size)`; fused tensors have several.
Pruning a model is then, per tensor and per dimension, the concatenation of the kept indices of
each segment (offset by the segments before it). Each family module (`minitron.families`) declares
its tensors with these segments, with its layouts written out beside them.

Segment axes: `hidden` (global channels), `ffn` (neurons of one MLP layer), `q` and `kv`
(head-major channels of one attention layer), `mamba_inner` (head-major H·P channels of one Mamba
layer), `mamba_heads` (one per Mamba head), `experts` (one per routed expert of an MoE layer: router
rows, correction bias, the expert dimension of fused expert tensors), `moe_ffn` (neurons of one routed
expert: each expert keeps its own), `shared_ffn` (neurons of an MoE layer's shared expert), and `fixed`
(never pruned: vocabulary, B/C state channels, conv taps, a latent MoE's latent channels).

Routed experts come in two layouts. A checkpoint stores one tensor per expert (`experts.{j}.up_proj.weight`,
`expert=j` on its spec, so its `moe_ffn` segment means expert j's neurons). transformers' module holds
them fused (`experts.up_proj`, [E, f, h]): such a spec is `stacked`, its dimension 0 is the `experts`
axis and every slice along it is expert j's tensor, cut with the remaining dimensions' segments for
that expert (the kept neurons differ from expert to expert, so the cut is per slice, not a product).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HIDDEN, FFN, Q, KV, MAMBA_INNER, MAMBA_HEADS, FIXED = (
    "hidden", "ffn", "q", "kv", "mamba_inner", "mamba_heads", "fixed",
)  # fmt: skip
EXPERTS, MOE_FFN, SHARED_FFN = "experts", "moe_ffn", "shared_ffn"

Segment = tuple[str, int]


@dataclass(frozen=True)
class TensorSpec:
    name: str  # canonical name, without the `model.`/`backbone.` prefix of the base model
    layer: int | None  # block index, None for embeddings / final norm / lm_head
    dims: tuple[tuple[Segment, ...], ...]  # per dimension, its segments
    expert: int | None = None  # the routed expert this checkpoint tensor belongs to
    stacked: bool = False  # dim 0 stacks per-expert tensors (transformers' fused experts)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(sum(size for _, size in segs) for segs in self.dims)

    def axes(self) -> set[str]:
        return {axis for segs in self.dims for axis, _ in segs if axis != FIXED}

    def expert_slice(self, j: int) -> TensorSpec:
        """Of a `stacked` spec: the spec of expert j's slice (dimension 0 removed)."""
        assert self.stacked
        return TensorSpec(f"{self.name}[{j}]", self.layer, self.dims[1:], expert=j)


def fixed(n: int) -> tuple[Segment, ...]:
    return ((FIXED, n),)


def one(axis: str, n: int) -> tuple[Segment, ...]:
    return ((axis, n),)


def layer_specs(arch, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
    """The tensors of block `i` of type `char`, as the model's family declares them."""
    return arch.impl.layer_specs(arch, i, char, layout)


def model_specs(arch, layout: str = "checkpoint") -> dict[str, TensorSpec]:
    """Every tensor a checkpoint of this architecture holds (state-dict entries), by canonical name.

    `layout`: "checkpoint" (as stored in safetensors files) or "module" (the model's `state_dict()`);
    they differ only in how MoE experts are named. A tied `lm_head` is left out where the family ties
    it (transformers' `save_pretrained` does not store it).
    """
    return {s.name: s for s in arch.impl.model_specs(arch, layout)}


# ---------------------------------------------------------------------- checkpoint key names
_BASE_PREFIXES = ("model.", "backbone.")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.*)$")
_EXPERT_RE = re.compile(r"^(.*\.experts\.)(\d+)(\..*)$")


def canonical_name(key: str) -> str:
    """`backbone.layers.3.mixer.D` / `model.layers.3.mixer.D` -> `layers.3.mixer.D`."""
    for prefix in _BASE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def base_prefix(keys) -> str:
    """The base-model prefix a checkpoint uses (`backbone.` in NVIDIA's releases, `model.` in transformers)."""
    for k in keys:
        for prefix in _BASE_PREFIXES:
            if k.startswith(prefix):
                return prefix
    return "model."


def checkpoint_name(canonical: str, prefix: str) -> str:
    return canonical if canonical.startswith("lm_head.") else prefix + canonical


def renumber_layer(canonical: str, new_index: int) -> str:
    m = _LAYER_RE.match(canonical)
    return f"layers.{new_index}.{m.group(2)}" if m else canonical


def renumber_expert(canonical: str, new_index: int) -> str:
    """`layers.4.mixer.experts.7.up_proj.weight` -> `layers.4.mixer.experts.{new_index}.up_proj.weight`."""
    m = _EXPERT_RE.match(canonical)
    return f"{m.group(1)}{new_index}{m.group(3)}" if m else canonical
