"""Dense decoder-only transformers: Llama and the families that differ from it only in details.

Every block (pattern character `*`) is

    x = x + o_proj(attn(q_proj, k_proj, v_proj)(input_layernorm(x)))
    x = x + down_proj(act(gate_proj(y)) * up_proj(y)),   y = post_attention_layernorm(x)

Tensor layouts (transformers' `modeling_llama`, `modeling_mistral`, `modeling_qwen2`, `modeling_qwen3`):

    embed_tokens.weight   vocab x hidden               lm_head.weight  vocab x hidden (absent when tied)
    q_proj.weight         [nq · d] x hidden            o_proj.weight   hidden x [nq · d]
    k_proj/v_proj.weight  [nkv · d] x hidden           (query head j reads KV head j // (nq / nkv))
    q_norm/k_norm.weight  [d]   (Qwen3: RMSNorm over each head's d channels, shared by the heads)
    gate_proj/up_proj     [ffn] x hidden               down_proj.weight  hidden x [ffn]
    input_layernorm, post_attention_layernorm, norm:  [hidden]

Axes: hidden (global), ffn (gate, up and down together), query heads (uniform per KV group), KV
heads, depth. `head_dim` is never cut, and is written explicitly whenever hidden ÷ heads (or the
family's default) no longer gives it: a width-pruned Llama built without it would be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.families.base import ATTENTION_C, FFN_C, Family, HookPoint, ModuleNames, config_getter
from minitron.families.parts import params_table, stacked_model_specs, written_config
from minitron.models.layer_types import ATTENTION
from minitron.models.tensors import FFN, HIDDEN, KV, Q, TensorSpec, fixed, one

COMPONENTS = ("embedding", "lm_head", "attention", "mlp", "norm")


@dataclass(frozen=True)
class DenseVariant:
    """How one dense family differs from Llama (the reason beside each difference)."""

    model_type: str
    # q/k/v biases: "config" (the `attention_bias` key; o_proj too), "always" (q/k/v, never o), "never".
    attention_bias: str = "config"
    mlp_bias: bool = True  # reads `mlp_bias` (only Llama's MLP has the option)
    qk_norm: bool = False
    default_head_dim: int | None = None  # None: hidden // heads when `head_dim` is absent
    # Sliding-window attention: "none", "all" (every layer, when `sliding_window` is set), or "per_layer"
    # (`use_sliding_window` gates it; `layer_types`, else layers >= `max_window_layers`, are windowed).
    sliding: str = "none"


DENSE_VARIANTS = (
    DenseVariant("llama"),
    # Mistral's linear layers have no bias option; NeMo 12B sets `head_dim` 128 with hidden 5120 / 32 heads.
    DenseVariant("mistral", attention_bias="never", mlp_bias=False, sliding="all"),
    # Qwen2 hard-codes q/k/v biases (o_proj has none) and ignores `attention_bias`.
    DenseVariant("qwen2", attention_bias="always", mlp_bias=False, sliding="per_layer"),
    # Qwen3 drops the biases (back to `attention_bias`), adds q/k RMSNorms, and defaults `head_dim` to 128.
    DenseVariant("qwen3", mlp_bias=False, qk_norm=True, default_head_dim=128, sliding="per_layer"),
)


class DenseFamily(Family):
    modules = ModuleNames(embedding="embed_tokens", final_norm="norm")

    def __init__(self, variant: DenseVariant):
        self.v = variant
        self.name = variant.model_type

    # ------------------------------------------------------------------ config <-> architecture
    def read(self, cfg: dict):

        get = config_getter(cfg)
        n_layers, hidden, n_heads = int(get("num_hidden_layers")), int(get("hidden_size")), int(get("num_attention_heads"))
        bias = {"config": bool(cfg.get("attention_bias", False)), "always": True, "never": False}[self.v.attention_bias]
        window, types = self._sliding(cfg, n_layers)
        return dict(
            family=self.name,
            pattern=ATTENTION * n_layers,
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or self._default_head_dim(hidden, n_heads)),
            mamba_num_heads=0, mamba_head_dim=0, n_groups=1, ssm_state_size=0, conv_kernel=0,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            mlp_bias=self.v.mlp_bias and bool(cfg.get("mlp_bias", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
            qkv_bias=bias,
            o_bias=bias and self.v.attention_bias == "config",
            qk_norm=self.v.qk_norm,
            layer_types=types,
            sliding_window=window,
            raw=dict(cfg),
        )

    def _sliding(self, cfg: dict, n_layers: int) -> tuple[int | None, tuple[str, ...] | None]:
        """(window, per-layer types) as the family's config class derives them."""
        types = cfg.get("layer_types")
        types = tuple(types) if isinstance(types, list) else None
        if self.v.sliding == "all":  # MistralConfig: `sliding_window` defaults to 4096
            return cfg.get("sliding_window", 4096), types
        if self.v.sliding == "per_layer":
            window = cfg.get("sliding_window", 4096) if cfg.get("use_sliding_window", False) else None
            if types is None:  # written out, so that depth pruning keeps each layer's type
                first = int(cfg.get("max_window_layers", 28))
                types = tuple("sliding_attention" if window is not None and i >= first else "full_attention"
                              for i in range(n_layers))
            return window, types
        return None, types

    def kv_tokens(self, arch, i: int, context: int) -> int:
        """transformers' sliding-window cache layers keep the last `window - 1` tokens."""
        if arch.sliding_window is None:
            return context
        sliding = arch.layer_types[i] == "sliding_attention" if arch.layer_types else self.v.sliding == "all"
        return min(context, arch.sliding_window - 1) if sliding else context

    def _default_head_dim(self, hidden: int, heads: int) -> int:
        return self.v.default_head_dim or hidden // max(heads, 1)

    def write(self, arch) -> dict:
        cfg = written_config(arch, num_hidden_layers=arch.num_layers, vocab_size=arch.vocab_size)
        if "head_dim" in cfg or self._default_head_dim(arch.hidden_size, arch.num_attention_heads) != arch.head_dim:
            cfg["head_dim"] = arch.head_dim
        if arch.layer_types is not None:
            cfg["layer_types"] = list(arch.layer_types)
        return cfg

    def validate(self, arch, need) -> None:
        need(set(arch.pattern) == {ATTENTION}, f"{self.name} models have only decoder layers")
        need(arch.intermediate_size > 0, "intermediate_size must be positive")
        need(arch.num_attention_heads > 0, "num_attention_heads must be positive")
        if arch.layer_types is not None:
            need(len(arch.layer_types) == arch.num_layers,
                 f"`layer_types` lists {len(arch.layer_types)} layers, num_hidden_layers is {arch.num_layers}")

    def components(self, char: str) -> frozenset[str]:
        return frozenset({ATTENTION_C, FFN_C})

    def unsupported_axes(self, arch) -> dict[str, str]:
        why = f"{self.name} models have no Mamba layers"
        return {"mamba_heads": why, "mamba_head_dim": why}

    # ------------------------------------------------------------------ parameters
    def _attention_params(self, a) -> int:
        h, q, kv = a.hidden_size, a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
        n = h * (q + 2 * kv) + q * h
        n += (q + 2 * kv) if a.qkv_bias else 0
        n += h if a.o_bias else 0
        n += 2 * a.head_dim if a.qk_norm else 0
        return n

    def _mlp_params(self, a) -> int:
        h, f = a.hidden_size, a.intermediate_size
        return 3 * h * f + ((2 * f + h) if a.mlp_bias else 0)

    def layer_params(self, arch, char: str) -> int:
        """One decoder layer: attention, gated MLP and its two RMSNorms."""
        return self._attention_params(arch) + self._mlp_params(arch) + 2 * arch.hidden_size

    def params(self, arch) -> dict[str, int]:
        n = arch.num_layers
        return params_table(arch, COMPONENTS, attention=n * self._attention_params(arch),
                            mlp=n * self._mlp_params(arch), norm=arch.hidden_size * (2 * n + 1))

    # ------------------------------------------------------------------ tensors
    def layer_specs(self, arch, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
        a = arch
        h = one(HIDDEN, a.hidden_size)
        q, kv = one(Q, a.num_attention_heads * a.head_dim), one(KV, a.num_key_value_heads * a.head_dim)
        ffn = one(FFN, a.intermediate_size)
        p = f"layers.{i}."
        s, m = p + "self_attn.", p + "mlp."
        specs = [
            TensorSpec(p + "input_layernorm.weight", i, (h,)),
            TensorSpec(s + "q_proj.weight", i, (q, h)),
            TensorSpec(s + "k_proj.weight", i, (kv, h)),
            TensorSpec(s + "v_proj.weight", i, (kv, h)),
            TensorSpec(s + "o_proj.weight", i, (h, q)),
            TensorSpec(p + "post_attention_layernorm.weight", i, (h,)),
            TensorSpec(m + "gate_proj.weight", i, (ffn, h)),
            TensorSpec(m + "up_proj.weight", i, (ffn, h)),
            TensorSpec(m + "down_proj.weight", i, (h, ffn)),
        ]
        if a.qkv_bias:
            specs += [TensorSpec(s + "q_proj.bias", i, (q,)), TensorSpec(s + "k_proj.bias", i, (kv,)),
                      TensorSpec(s + "v_proj.bias", i, (kv,))]
        if a.o_bias:
            specs.append(TensorSpec(s + "o_proj.bias", i, (h,)))
        if a.qk_norm:  # per-head RMSNorm weights: [head_dim], shared by every head, never cut
            specs += [TensorSpec(s + "q_norm.weight", i, (fixed(a.head_dim),)),
                      TensorSpec(s + "k_norm.weight", i, (fixed(a.head_dim),))]
        if a.mlp_bias:
            specs += [TensorSpec(m + "gate_proj.bias", i, (ffn,)), TensorSpec(m + "up_proj.bias", i, (ffn,)),
                      TensorSpec(m + "down_proj.bias", i, (h,))]
        return specs

    def model_specs(self, arch, layout: str = "checkpoint") -> list[TensorSpec]:
        return stacked_model_specs(self, arch, layout, "norm")

    def norm_readers_by_layer(self, arch):
        return lambda i: {"input_layernorm": ("self_attn",), "post_attention_layernorm": ("mlp",)}

    # ------------------------------------------------------------------ running blocks
    def hook_points(self, arch, char: str) -> list[HookPoint]:
        return [
            HookPoint("hidden", "input_layernorm"),
            HookPoint("hidden", "post_attention_layernorm", tag="post"),
            HookPoint("attention", "self_attn.o_proj"),
            HookPoint("ffn", "mlp.down_proj"),
        ]

    def prepare_blocks(self, model, config, h) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = {"config": config, "inputs_embeds": h, "attention_mask": None, "cache": None, "position_ids": pos}
        masks = {"full_attention": create_causal_mask(**kw)}
        if getattr(config, "sliding_window", None) is not None:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        types = getattr(config, "layer_types", None)
        if types is None:  # Mistral: every layer uses the window when the config sets one
            kind = "sliding_attention" if "sliding_attention" in masks else "full_attention"
            types = [kind] * config.num_hidden_layers
        layer_masks = [masks.get(t, masks["full_attention"]) for t in types]
        return {"masks": layer_masks, "position_ids": pos, "rope": model.model.rotary_emb(h, pos)}

    def call_block(self, blk, i: int, h, kw: dict):
        return blk(h, attention_mask=kw["masks"][i], position_ids=kw["position_ids"], position_embeddings=kw["rope"])

    def fix_meta_model(self, model, config, device) -> None:
        import torch

        rope = model.model.rotary_emb
        with torch.device("cpu"):  # not the meta device the model was built on
            model.model.rotary_emb = type(rope)(config=config).to(device)
