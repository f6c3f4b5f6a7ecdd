"""Which tensor belongs to which prunable axis: the coupled groups, written out once.

Every tensor of a Nemotron-H checkpoint is described by a `TensorSpec`: its shape and, for each
dimension, the ordered *segments* that make it up. A segment is `(axis, size)`; fused tensors have
several. Pruning a model is then, per tensor and per dimension, the concatenation of the kept
indices of each segment (offset by the segments before it). The layouts (transformers' `nemotron_h`
and mamba_ssm's Mamba-2):

    in_proj.weight   [z (H·P) | x (H·P) | B (G·N) | C (G·N) | dt (H)]  x  hidden
    conv1d.weight    [x (H·P) | B (G·N) | C (G·N)]  x 1 x K
    norm.weight      [H·P]  (gated RMSNorm over n_groups groups of H·P/G channels)
    out_proj.weight  hidden x [H·P]
    q_proj.weight    [nq · d]  x hidden        o_proj.weight  hidden x [nq · d]
    k_proj/v_proj    [nkv · d] x hidden
    up_proj.weight   [ffn] x hidden            down_proj.weight  hidden x [ffn]

Segment axes: `hidden` (global channels), `ffn` (neurons of one MLP layer), `q` and `kv`
(head-major channels of one attention layer), `mamba_inner` (head-major H·P channels of one Mamba
layer), `mamba_heads` (one per Mamba head), and `fixed` (never pruned: vocabulary, B/C state
channels, conv taps, experts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from minitron.models.architecture import Architecture
from minitron.models.layers import ATTENTION, MAMBA, MLP, MOE

HIDDEN, FFN, Q, KV, MAMBA_INNER, MAMBA_HEADS, FIXED = (
    "hidden", "ffn", "q", "kv", "mamba_inner", "mamba_heads", "fixed",
)  # fmt: skip

Segment = tuple[str, int]


@dataclass(frozen=True)
class TensorSpec:
    name: str  # canonical name, without the `model.`/`backbone.` prefix of the base model
    layer: int | None  # block index, None for embeddings / final norm / lm_head
    dims: tuple[tuple[Segment, ...], ...]  # per dimension, its segments

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(sum(size for _, size in segs) for segs in self.dims)

    def axes(self) -> set[str]:
        return {axis for segs in self.dims for axis, _ in segs if axis != FIXED}


def _fixed(n: int) -> tuple[Segment, ...]:
    return ((FIXED, n),)


def _one(axis: str, n: int) -> tuple[Segment, ...]:
    return ((axis, n),)


def layer_specs(arch: Architecture, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
    """The tensors of block `i` of type `char`.

    `layout="checkpoint"` names MoE experts as stored on disk (`experts.{j}.up_proj.weight`, one per
    expert); `layout="module"` as transformers' module holds them (`experts.up_proj`, fused [E, ...]).
    """
    h = _one(HIDDEN, arch.hidden_size)
    p = f"layers.{i}."
    specs = [TensorSpec(p + "norm.weight", i, (h,))]
    m = p + "mixer."
    if char == MAMBA:
        inner, heads = arch.mamba_intermediate, arch.mamba_num_heads
        gn = arch.n_groups * arch.ssm_state_size
        in_rows = ((MAMBA_INNER, inner), (MAMBA_INNER, inner), (FIXED, gn), (FIXED, gn), (MAMBA_HEADS, heads))
        conv_ch = ((MAMBA_INNER, inner), (FIXED, gn), (FIXED, gn))
        specs += [
            TensorSpec(m + "in_proj.weight", i, (in_rows, h)),
            TensorSpec(m + "conv1d.weight", i, (conv_ch, _fixed(1), _fixed(arch.conv_kernel))),
            TensorSpec(m + "dt_bias", i, (_one(MAMBA_HEADS, heads),)),
            TensorSpec(m + "A_log", i, (_one(MAMBA_HEADS, heads),)),
            TensorSpec(m + "D", i, (_one(MAMBA_HEADS, heads),)),
            TensorSpec(m + "norm.weight", i, (_one(MAMBA_INNER, inner),)),
            TensorSpec(m + "out_proj.weight", i, (h, _one(MAMBA_INNER, inner))),
        ]
        if arch.use_conv_bias:
            specs.append(TensorSpec(m + "conv1d.bias", i, (conv_ch,)))
        if arch.use_bias:
            specs += [TensorSpec(m + "in_proj.bias", i, (in_rows,)), TensorSpec(m + "out_proj.bias", i, (h,))]
    elif char == ATTENTION:
        q = _one(Q, arch.num_attention_heads * arch.head_dim)
        kv = _one(KV, arch.num_key_value_heads * arch.head_dim)
        specs += [
            TensorSpec(m + "q_proj.weight", i, (q, h)),
            TensorSpec(m + "k_proj.weight", i, (kv, h)),
            TensorSpec(m + "v_proj.weight", i, (kv, h)),
            TensorSpec(m + "o_proj.weight", i, (h, q)),
        ]
    elif char == MLP:
        specs += _mlp_specs(m, i, h, _one(FFN, arch.intermediate_size), arch.mlp_bias)
    elif char == MOE:
        n_exp, f = arch.n_routed_experts, arch.moe_intermediate_size
        inner = _fixed(arch.moe_latent_size) if arch.moe_latent_size else h
        if layout == "module":
            specs += [
                TensorSpec(m + "experts.up_proj", i, (_fixed(n_exp), _fixed(f), inner)),
                TensorSpec(m + "experts.down_proj", i, (_fixed(n_exp), inner, _fixed(f))),
            ]
        else:
            for j in range(n_exp):
                specs += [
                    TensorSpec(m + f"experts.{j}.up_proj.weight", i, (_fixed(f), inner)),
                    TensorSpec(m + f"experts.{j}.down_proj.weight", i, (inner, _fixed(f))),
                ]
        specs += [
            TensorSpec(m + "gate.weight", i, (_fixed(n_exp), h)),
            TensorSpec(m + "gate.e_score_correction_bias", i, (_fixed(n_exp),)),
        ]
        specs += _mlp_specs(m + "shared_experts.", i, h, _fixed(arch.moe_shared_expert_intermediate_size), arch.mlp_bias)
        if arch.moe_latent_size:
            lat = _fixed(arch.moe_latent_size)
            specs += [
                TensorSpec(m + "fc1_latent_proj.weight", i, (lat, h)),
                TensorSpec(m + "fc2_latent_proj.weight", i, (h, lat)),
            ]
            if arch.mlp_bias:
                specs += [TensorSpec(m + "fc1_latent_proj.bias", i, (lat,)), TensorSpec(m + "fc2_latent_proj.bias", i, (h,))]
    else:  # pragma: no cover - layer_char() rejects anything else
        raise ValueError(char)
    return specs


def _mlp_specs(m: str, i: int, h, ffn, bias: bool) -> list[TensorSpec]:
    specs = [TensorSpec(m + "up_proj.weight", i, (ffn, h)), TensorSpec(m + "down_proj.weight", i, (h, ffn))]
    if bias:
        specs += [TensorSpec(m + "up_proj.bias", i, (ffn,)), TensorSpec(m + "down_proj.bias", i, (h,))]
    return specs


def model_specs(arch: Architecture, layout: str = "checkpoint") -> dict[str, TensorSpec]:
    """Every tensor a checkpoint of this architecture holds (state-dict entries), by canonical name.

    `layout`: "checkpoint" (as stored in safetensors files) or "module" (the model's `state_dict()`);
    they differ only in how MoE experts are named.
    `lm_head.weight` is always there: transformers' `NemotronHForCausalLM` never ties it. The MoE router's
    `e_score_correction_bias` is a persistent buffer, not a parameter.
    """
    vocab, h = _fixed(arch.vocab_size), _one(HIDDEN, arch.hidden_size)
    specs = [TensorSpec("embeddings.weight", None, (vocab, h))]
    for i, c in enumerate(arch.pattern):
        specs += layer_specs(arch, i, c, layout)
    specs.append(TensorSpec("norm_f.weight", None, (h,)))
    specs.append(TensorSpec("lm_head.weight", None, (vocab, h)))
    return {s.name: s for s in specs}


def is_parameter(name: str) -> bool:
    return not name.endswith("e_score_correction_bias")


# ---------------------------------------------------------------------- checkpoint key names
_BASE_PREFIXES = ("model.", "backbone.")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.*)$")


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


def layer_of(canonical: str) -> int | None:
    m = _LAYER_RE.match(canonical)
    return int(m.group(1)) if m else None
