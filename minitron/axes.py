"""The prunable axes, each declared once.

An `Axis` says everything the shared code needs about one way of making a model smaller: its name
(the shape key, the search axis and the `prune --json` plan key), the `Architecture` field it sets,
the CLI flag, the layers it lives in, the score tensor that ranks its units and that tensor's shape,
the `PrunePlan` field holding the kept indices, and the tensor segment (`minitron.models.tensors`)
it cuts. Shapes, their validation, search spaces and limits, score shapes, unit counts and plan
summaries iterate `AXES`; depth (`num_layers`) is the one axis outside it, since it removes whole
blocks rather than units of a block.

Adding an axis: one `Axis` here, its parameter formula in the families (`minitron.families`), its
segments in the tensor specs, its ranking in `minitron.prune.select.make_plan` and its statistic in
`minitron.importance.hooks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.models.tensors import EXPERTS, FFN, HIDDEN, KV, MAMBA_HEADS, MAMBA_INNER, MOE_FFN, SHARED_FFN, Q


@dataclass(frozen=True)
class Axis:
    name: str  # shape key / search axis / plan-summary key: "hidden_size"
    field: str  # the Architecture field it sets: "hidden_size"
    unit: str  # the unit-count key and the score tensor: "hidden"
    component: str | None  # the layers it lives in (`attention`, `ffn`, `mamba`, `moe`); None: model-wide
    plan: str | None  # the PrunePlan field of kept indices (None: a number, not a ranking)
    segment: str | None  # the tensor segment it cuts
    label: str  # what a unit is called in messages
    per_expert: bool = False  # the score has one row per routed expert ([layers, experts, units])
    may_grow: bool = False  # may be set above the model's value (the router's top-k)
    help: str = ""  # the `prune` flag's help (an exact target for the axis)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def size(self, arch) -> int:
        """The model's value of this axis."""
        return getattr(arch, self.field)

    def layers(self, arch) -> list[int]:
        """The layers holding the axis (every layer for a model-wide axis)."""
        return list(range(arch.num_layers)) if self.component is None else arch.layers_with(self.component)

    def present(self, arch) -> bool:
        return bool(self.layers(arch))

    def units(self, arch) -> int:
        """How many units the axis has (0 when the model has none of its layers)."""
        return self.size(arch) if self.present(arch) else 0

    def score_shape(self, arch) -> tuple[int, ...]:
        """Shape of the axis' tensor in `scores.safetensors`."""
        if self.component is None:
            return (self.size(arch),)
        n = len(self.layers(arch))
        if self.per_expert:
            return (n, arch.n_routed_experts, self.size(arch))
        return (n, self.size(arch) if n else 0)


AXES: tuple[Axis, ...] = (
    Axis("hidden_size", "hidden_size", "hidden", None, "hidden", HIDDEN, "hidden channel",
         help="Exact target: hidden (embedding) channels."),
    Axis("ffn_size", "intermediate_size", "ffn", "ffn", "ffn", FFN, "FFN neuron",
         help="Exact target: FFN neurons per MLP layer."),
    Axis("mamba_heads", "mamba_num_heads", "mamba_heads", "mamba", "mamba_heads", MAMBA_HEADS, "Mamba head",
         help="Exact target: Mamba heads per layer (a multiple of the groups)."),
    Axis("mamba_head_dim", "mamba_head_dim", "mamba_head_dim", "mamba", "mamba_dims", MAMBA_INNER, "Mamba head-dim",
         help="Exact target: channels per Mamba head."),
    Axis("attention_heads", "num_attention_heads", "attention_heads", "attention", "q_heads", Q, "query head",
         help="Exact target: query heads per attention layer."),
    Axis("kv_heads", "num_key_value_heads", "kv_heads", "attention", "kv_heads", KV, "KV head",
         help="Exact target: KV heads (whole GQA groups) per attention layer."),
    Axis("experts", "n_routed_experts", "experts", "moe", "experts", EXPERTS, "routed expert",
         help="Exact target: routed experts kept per MoE layer (a multiple of n_group)."),
    Axis("moe_ffn_size", "moe_intermediate_size", "moe_ffn", "moe", "moe_ffn", MOE_FFN, "expert neuron",
         per_expert=True,
         help="Exact target: neurons kept in every routed expert."),
    Axis("shared_expert_ffn_size", "moe_shared_expert_intermediate_size", "shared_expert_ffn", "moe", "shared_ffn",
         SHARED_FFN, "shared-expert neuron",
         help="Exact target: neurons of the shared expert."),
    Axis("experts_per_token", "num_experts_per_tok", "experts_per_token", "moe", None, None, "routed expert per token",
         may_grow=True,
         help="Exact target: the router's top-k (changes the function)."),
)
BY_NAME: dict[str, Axis] = {a.name: a for a in AXES}
BY_UNIT: dict[str, Axis] = {a.unit: a for a in AXES}
SCORED: tuple[Axis, ...] = tuple(a for a in AXES if a.plan is not None)  # axes ranked by a score tensor
NAMES: tuple[str, ...] = tuple(a.name for a in AXES)
FLAGS: dict[str, str] = {a.name: a.flag for a in AXES}
