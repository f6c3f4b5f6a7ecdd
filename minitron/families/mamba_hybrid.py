"""Mamba-2 hybrids whose every layer is a mixer plus an MLP: Bamba and Granite 4.0-H.

Each block (pattern `M`: Mamba-2, `*`: attention) is, in transformers' `BambaDecoderLayer` and
`GraniteMoeHybridDecoderLayer`,

    x = x + r · mixer(input_layernorm(x))            mixer: `mamba` (Mamba-2) or `self_attn`
    x = x + r · mlp(post_norm(x))                    r: Granite's `residual_multiplier` (Bamba: 1)

so every layer holds an FFN (components `mamba`/`attention` plus `ffn`). The Mamba-2 layout is
`mamba2.py`'s. Differences from each other, as data (`HybridVariant`):

    Bamba     post_norm `pre_ff_layernorm`; MLP `feed_forward.{gate,up,down}_proj` (`mlp_bias`);
              final norm `final_layernorm`; attention layers listed in `attn_layer_indices`;
              rotary on half of each head (`partial_rotary_factor` 0.5, unaffected by cuts).
    Granite   post_norm `post_attention_layernorm`; MLP `shared_mlp.input_linear` = [gate (F) | up (F)]
              fused rows, `shared_mlp.output_linear`; FFN width `shared_intermediate_size`; final norm
              `norm`; `layer_types` per layer; µP multipliers (embedding, residual, attention, logits)
              are scalars and stay; no rotary when `position_embedding_type` is `nope`.

Both configs derive the Mamba width as `int(mamba_expand × hidden_size)` and validate
`mamba_n_heads × mamba_d_head == mamba_expand × hidden_size` with an *integer* `mamba_expand`: a cut
is sound only if the kept Mamba width is a whole multiple of the kept hidden size (refused otherwise,
with the reason).

Granite with routed experts (`num_local_experts > 0`: Granite 4.0-H tiny / small) adds to every layer,
beside the shared MLP and on the same normed input, `block_sparse_moe`:

    checkpoint                                  module (transformers' renaming on load)
    block_sparse_moe.input_linear.weight        experts.gate_up_proj   [E, gate (Fe) | up (Fe), hidden]
    block_sparse_moe.output_linear.weight       experts.down_proj      [E, hidden, Fe]
    block_sparse_moe.router.layer.weight        router.weight          [E, hidden]

(Fe: the config's `intermediate_size`; the shared MLP's width is `shared_intermediate_size`). Both the
checkpoint and the module hold the experts fused ([E, ...], `stacked` specs in either layout). The
router is a bias-free linear: each token takes the `num_experts_per_tok` largest logits and softmaxes
over those alone. Cut here: `--experts` (`num_local_experts`: expert slices and router rows),
`--moe-ffn-size` (`intermediate_size`: each expert its own neurons, rows of both halves of
`input_linear` and columns of `output_linear`) and `--experts-per-token` (`num_experts_per_tok`).
`--shared-expert-ffn-size` is refused as redundant: Granite's shared MLP is the `--ffn-size` axis
(`shared_intermediate_size`, the `ffn` scores), present with or without experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import minitron.families.parts as parts
from minitron.families.base import (
    ATTENTION_C,
    FFN_C,
    MAMBA_C,
    MOE_C,
    Family,
    HookPoint,
    ModuleNames,
    config_getter,
)
from minitron.families.mamba2 import mamba2_config_fields, mamba2_params, mamba2_specs
from minitron.models.layer_types import ATTENTION, MAMBA, pattern_from_config, set_pattern
from minitron.models.tensors import EXPERTS, FFN, HIDDEN, MOE_FFN, TensorSpec, one

COMPONENTS = ("embedding", "lm_head", "mamba", "attention", "mlp", "moe", "norm")
# Granite's MoE tensors: checkpoint name -> module name (transformers' `granitemoe` weight renaming).
_MOE_NAMES = {"input_linear.weight": "experts.gate_up_proj", "output_linear.weight": "experts.down_proj",
              "router.layer.weight": "router.weight"}


@dataclass(frozen=True)
class HybridVariant:
    model_type: str
    post_norm: str
    final_norm: str
    mlp: str  # attribute of the MLP in the block
    fused_gate_up: bool  # Granite: one `input_linear` holding [gate | up]
    ffn_key: str  # config key of the FFN width


VARIANTS = (
    HybridVariant("bamba", post_norm="pre_ff_layernorm", final_norm="final_layernorm", mlp="feed_forward",
                  fused_gate_up=False, ffn_key="intermediate_size"),
    HybridVariant("granitemoehybrid", post_norm="post_attention_layernorm", final_norm="norm", mlp="shared_mlp",
                  fused_gate_up=True, ffn_key="shared_intermediate_size"),
)


class MambaHybridFamily(Family):
    def __init__(self, variant: HybridVariant):
        self.v = variant
        self.name = variant.model_type
        self.modules = ModuleNames(embedding="embed_tokens", final_norm=variant.final_norm)

    # ------------------------------------------------------------------ config <-> architecture
    def _pattern(self, cfg: dict) -> str:
        if self.name == "bamba":  # `layers_block_type` is a property of `attn_layer_indices`
            attn = set(cfg.get("attn_layer_indices") or [])
            return "".join(ATTENTION if i in attn else MAMBA for i in range(int(cfg["num_hidden_layers"])))
        return pattern_from_config({"layer_types": cfg.get("layer_types") or ["mamba"] * cfg["num_hidden_layers"]})

    def read(self, cfg: dict):

        get = config_getter(cfg)
        experts = int(cfg.get("num_local_experts") or 0) if self.name == "granitemoehybrid" else 0
        get("num_hidden_layers")
        hidden, n_heads = int(get("hidden_size")), int(get("num_attention_heads"))
        m_heads, expand = int(get("mamba_n_heads", 128)), int(get("mamba_expand", 2))
        d_head = cfg.get("mamba_d_head", "auto")
        d_head = expand * hidden // m_heads if d_head in (None, "auto") else int(d_head)
        bias = bool(cfg.get("attention_bias", False))
        return dict(
            family=self.name,
            pattern=self._pattern(cfg),
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get(self.v.ffn_key)),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or hidden // n_heads),  # `getattr(config, "head_dim", h // heads)`
            mamba_num_heads=m_heads,
            mamba_head_dim=d_head,
            **mamba2_config_fields(cfg, get),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)) and self.name == "bamba",
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 262144),
            mamba_ssm_cache_dtype="float32" if cfg.get("mamba_ssm_cache_dtype") is None
            else str(cfg["mamba_ssm_cache_dtype"]),
            qkv_bias=bias,
            o_bias=bias,
            n_routed_experts=experts,
            moe_intermediate_size=int(get("intermediate_size")) if experts else 0,
            # transformers' GraniteMoeHybridConfig default: top-2.
            num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 2) if experts else 0,
            raw=dict(cfg),
        )

    def write(self, arch) -> dict:
        cfg = parts.written_config(
            arch, self.v.ffn_key,
            mamba_n_heads=arch.mamba_num_heads, mamba_d_head=arch.mamba_head_dim,
            mamba_expand=arch.mamba_intermediate // arch.hidden_size, vocab_size=arch.vocab_size,
            num_hidden_layers=arch.num_layers,
        )  # fmt: skip
        if arch.n_routed_experts:
            cfg.update(num_local_experts=arch.n_routed_experts, intermediate_size=arch.moe_intermediate_size,
                       num_experts_per_tok=arch.num_experts_per_tok)
        if "head_dim" in cfg or arch.hidden_size // arch.num_attention_heads != arch.head_dim:
            cfg["head_dim"] = arch.head_dim
        if self.name == "bamba":
            cfg["attn_layer_indices"] = arch.layers_of(ATTENTION)
            cfg.pop("layers_block_type", None)
            cfg.pop("layer_types", None)
            return cfg
        return set_pattern({**cfg, "layer_types": cfg.get("layer_types") or ["mamba"]}, arch.pattern)

    def validate(self, arch, need) -> None:
        need(set(arch.pattern) <= {MAMBA, ATTENTION}, f"{self.name} layers are Mamba-2 or attention")
        need(arch.intermediate_size > 0, f"`{self.v.ffn_key}` must be positive")
        if MAMBA in arch.pattern:
            need(arch.mamba_num_heads > 0 and arch.mamba_head_dim > 0, "mamba heads and head dim must be positive")
            need(arch.mamba_num_heads % arch.n_groups == 0,
                 f"mamba_n_heads ({arch.mamba_num_heads}) is not a multiple of mamba_n_groups ({arch.n_groups})")
        if arch.n_routed_experts:
            e, k = arch.n_routed_experts, arch.num_experts_per_tok
            need(arch.moe_intermediate_size > 0, "`intermediate_size` (the expert width) must be positive")
            need(1 <= k <= e, f"num_experts_per_tok ({k}) must be in 1..num_local_experts ({e})")

    def unsupported_axes(self, arch) -> dict[str, str]:
        if not arch.n_routed_experts:
            return {}
        return {"shared_expert_ffn_size": f"{self.name}'s shared MLP is the --ffn-size axis "
                                          "(shared_intermediate_size); use --ffn-size"}

    def target_problem(self, arch, target) -> tuple[str, str] | None:
        width = target.mamba_intermediate
        if MAMBA in target.pattern and width % target.hidden_size:
            flag = "--hidden-size" if target.hidden_size != arch.hidden_size else "--mamba-heads"
            return flag, (f"{self.name} derives the Mamba width as an integer mamba_expand × hidden_size: "
                          f"{target.mamba_num_heads} heads × {target.mamba_head_dim} = {width} is not a multiple "
                          f"of hidden size {target.hidden_size}")
        return None

    def components(self, char: str) -> frozenset[str]:
        return frozenset({MAMBA_C if char == MAMBA else ATTENTION_C, FFN_C})

    def layer_components(self, arch, char: str) -> frozenset[str]:
        """Every layer of a Granite model with routed experts also holds them (`moe`)."""
        return self.components(char) | ({MOE_C} if arch.n_routed_experts else frozenset())

    # ------------------------------------------------------------------ parameters
    def _attention_params(self, a) -> int:
        return parts.attention_params(a, a.hidden_size, bias=a.qkv_bias, o_bias=a.o_bias)

    def expert_params(self, a) -> int:
        """One routed expert: gate_up [2Fe, h] and down [h, Fe], no bias."""
        return 3 * a.moe_intermediate_size * a.hidden_size

    def _moe_params(self, a) -> int:
        """Routed experts and the router ([E, h]) of one layer."""
        return a.n_routed_experts * (self.expert_params(a) + a.hidden_size)

    def active_params(self, arch) -> dict[str, int]:
        """`params()` less the routed experts a token skips: all but `num_experts_per_tok` in every layer."""
        out = self.params(arch)
        idle = arch.num_layers * (arch.n_routed_experts - arch.num_experts_per_tok) * self.expert_params(arch)
        out["moe"] -= idle
        out["total"] -= idle
        return out

    def moe_unit_counts(self, arch) -> dict[str, int]:
        e = arch.n_routed_experts
        return {"experts": e, "moe_ffn": arch.moe_intermediate_size if e else 0, "shared_expert_ffn": 0,
                "experts_per_token": arch.num_experts_per_tok if e else 0}

    def layer_params(self, arch, char: str) -> int:
        mixer = mamba2_params(arch) if char == MAMBA else self._attention_params(arch)
        return 2 * arch.hidden_size + mixer + parts.gated_mlp_params(arch, bias=arch.mlp_bias) + self._moe_params(arch)

    def params(self, arch) -> dict[str, int]:
        n, n_m = arch.num_layers, arch.count(MAMBA)
        return parts.params_table(
            arch, COMPONENTS,
            mamba=n_m * mamba2_params(arch) if n_m else 0,
            attention=(n - n_m) * self._attention_params(arch),
            mlp=n * parts.gated_mlp_params(arch, bias=arch.mlp_bias),
            moe=n * self._moe_params(arch),
            norm=arch.hidden_size * (2 * n + 1),
        )  # fmt: skip

    # ------------------------------------------------------------------ tensors
    def layer_specs(self, arch, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
        a = arch
        h, ffn = one(HIDDEN, a.hidden_size), one(FFN, a.intermediate_size)
        p = f"layers.{i}."
        specs = [TensorSpec(p + "input_layernorm.weight", i, (h,)),
                 TensorSpec(p + self.v.post_norm + ".weight", i, (h,))]
        if char == MAMBA:
            specs += mamba2_specs(a, p + "mamba.", i)
        else:
            specs += parts.attention_specs(a, p + "self_attn.", i, h, h, bias=a.qkv_bias, o_bias=a.o_bias)
        m = p + self.v.mlp + "."
        if self.v.fused_gate_up:  # `input_linear` rows: [gate (F) | up (F)] (`chunk(2, dim=-1)`)
            f = a.intermediate_size
            specs += [TensorSpec(m + "input_linear.weight", i, (((FFN, f), (FFN, f)), h)),
                      TensorSpec(m + "output_linear.weight", i, (h, ffn))]
        else:
            specs += parts.gated_mlp_specs(a, m, i, h, bias=a.mlp_bias)
        if a.n_routed_experts:  # fused in both layouts: [E, gate (Fe) | up (Fe), h], [E, h, Fe]; router [E, h]
            e, fe = one(EXPERTS, a.n_routed_experts), a.moe_intermediate_size
            shapes = {"input_linear.weight": ((e, ((MOE_FFN, fe), (MOE_FFN, fe)), h), True),
                      "output_linear.weight": ((e, h, one(MOE_FFN, fe)), True),
                      "router.layer.weight": ((e, h), False)}
            for name, (dims, stacked) in shapes.items():
                specs.append(TensorSpec(p + "block_sparse_moe." + (_MOE_NAMES[name] if layout == "module" else name),
                                        i, dims, stacked=stacked))
        return specs

    def model_specs(self, arch, layout: str = "checkpoint") -> list[TensorSpec]:
        return parts.stacked_model_specs(self, arch, layout, self.v.final_norm)

    def norm_readers_by_layer(self, arch):
        mixers = ("mamba", "self_attn")
        return lambda i: {"input_layernorm": mixers, self.v.post_norm: (self.v.mlp, "block_sparse_moe")}

    # ------------------------------------------------------------------ running blocks
    def hook_points(self, arch, char: str) -> list[HookPoint]:
        mixer = HookPoint("mamba", "mamba.in_proj") if char == MAMBA else HookPoint("attention", "self_attn.o_proj")
        down = "output_linear" if self.v.fused_gate_up else "down_proj"
        moe = [HookPoint("experts", "block_sparse_moe.experts")] if arch.n_routed_experts else []
        return [HookPoint("hidden", "input_layernorm"), HookPoint("hidden", self.v.post_norm, tag="post"), mixer,
                HookPoint("ffn", f"{self.v.mlp}.{down}"), *moe]

    def prepare_blocks(self, model, config, h) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = {"config": config, "inputs_embeds": h, "attention_mask": None, "cache": None, "position_ids": pos}
        masks = {"full_attention": create_causal_mask(**kw), "linear_attention": create_recurrent_attention_mask(**kw)}
        rope = model.model.rotary_emb
        return {"masks": masks, "position_ids": pos, "rope": rope(h, pos) if rope is not None else None}

    def call_block(self, blk, i: int, h, kw: dict):
        out = blk(h, attention_mask=kw["masks"][blk.block_type], position_embeddings=kw["rope"])
        return out[0] if isinstance(out, tuple) else out  # Bamba returns (hidden, attention weights)

    def checkpoint_tensor(self, arch, canonical: str) -> str:
        """The stored name of a module tensor (Granite's MoE tensors are renamed on load)."""
        for stored, module in _MOE_NAMES.items():
            if canonical.endswith(".block_sparse_moe." + module):
                return canonical[: -len(module)] + stored
        return canonical

    def embedding_scale(self, config) -> float:
        return float(getattr(config, "embedding_multiplier", 1.0) or 1.0)

    def logits_divisor(self, config) -> float:
        return float(getattr(config, "logits_scaling", 1.0) or 1.0)

    def fix_meta_model(self, model, config, device) -> None:
        import torch

        rope = model.model.rotary_emb
        if rope is not None:
            with torch.device("cpu"):
                model.model.rotary_emb = type(rope)(config=config).to(device)
