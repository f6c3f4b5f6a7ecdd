"""Falcon-H1 (`falcon_h1`): attention and Mamba-2 side by side in every layer, then an MLP.

Each block (transformers' `FalconH1DecoderLayer`; pattern character `*`, every layer alike) is

    y = input_layernorm(x)
    x = x + s_out · mamba(s_in · y) + a_out · self_attn(a_in · y)
    x = x + feed_forward(pre_ff_layernorm(x))          gate · g, down · d   (`mlp_multipliers` [g, d])

so a layer holds all three components (`attention`, `mamba`, `ffn`). Checked against
`modeling_falcon_h1.py` (transformers 5.24), not assumed from Nemotron-H or Bamba:

- `FalconH1Mixer`: `in_proj` rows `[z (H·P) | x (H·P) | B (G·N) | C (G·N) | dt (H)]`
  (`split([intermediate, conv_dim, num_heads])`), conv channels `[x | B | C]` - the layout of
  `mamba2.py`. The projected states are multiplied by `mup_vector` (one scalar per segment,
  `ssm_multipliers`; a non-persistent buffer rebuilt from the config, so it follows any cut).
- `d_inner` does *not* follow `mamba_expand × hidden`: it is `mamba_d_ssm` when set (0.5B: 1536 with
  hidden 1024, expand 2); the pruned config writes `mamba_d_ssm = heads × head_dim`, so the Mamba
  width is free of the hidden size (unlike Bamba and Granite).
- The gated RMSNorm is optional (`mamba_rms_norm`, off in the released models): without it the scan
  output is multiplied by silu(z) and there is no `norm.weight`. With it, it normalises `mamba_n_groups`
  groups of H·P / G channels (`FalconH1RMSNormGated`), so heads are cut the same number per group.
- in_proj's bias is `mamba_proj_bias`, out_proj's is `projectors_bias`; attention is Llama's (biases
  `attention_bias`, `head_dim` explicit: 0.5B has 64 with hidden 1024 / 8 heads) with keys scaled by
  `key_multiplier`; the MLP is gated (gate, up, down; `mlp_bias`).
- µP multipliers (embedding, attention in/out, SSM in/out, `ssm_multipliers`, MLP, `lm_head_multiplier`)
  are scalars and stay; the scoring engine applies the embedding and logit ones as the model does.
- Depth rewrites `num_hidden_layers` only (`layers_block_type` is a property: every layer "hybrid").
"""

from __future__ import annotations

import minitron.families.parts as parts
from minitron.families.base import ATTENTION_C, FFN_C, MAMBA_C, Family, HookPoint, ModuleNames, config_getter
from minitron.families.mamba2 import mamba2_config_fields, mamba2_params, mamba2_specs
from minitron.models.layer_types import ATTENTION
from minitron.models.tensors import HIDDEN, TensorSpec, one

COMPONENTS = ("embedding", "lm_head", "mamba", "attention", "mlp", "norm")


class FalconH1(Family):
    name = "falcon_h1"
    modules = ModuleNames(embedding="embed_tokens", final_norm="final_layernorm")

    # ------------------------------------------------------------------ config <-> architecture
    def read(self, cfg: dict):

        get = config_getter(cfg)
        hidden, n_heads = int(get("hidden_size")), int(get("num_attention_heads"))
        m_heads = int(get("mamba_n_heads", 128))
        d_ssm = cfg.get("mamba_d_ssm", 1024)  # FalconH1Config default 1024; None: expand × hidden
        d_ssm = int(get("mamba_expand", 2)) * hidden if d_ssm is None else int(d_ssm)
        d_head = cfg.get("mamba_d_head", "auto")
        bias = bool(cfg.get("attention_bias", False))
        return dict(
            family=self.name,
            pattern=ATTENTION * int(get("num_hidden_layers")),
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or hidden // n_heads),  # LlamaAttention: `head_dim` or h // heads
            mamba_num_heads=m_heads,
            mamba_head_dim=d_ssm // m_heads if d_head in (None, "auto") else int(d_head),
            **mamba2_config_fields(cfg, get),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 8192),
            mamba_ssm_cache_dtype=str(cfg.get("mamba_ssm_cache_dtype") or "float32"),
            qkv_bias=bias,
            o_bias=bias,
            raw=dict(cfg),
        )

    def _gated_norm(self, arch) -> bool:
        return bool(arch.raw.get("mamba_rms_norm", False))

    def _out_bias(self, arch) -> bool:
        return bool(arch.raw.get("projectors_bias", False))

    def write(self, arch) -> dict:
        return parts.written_config(
            arch,
            head_dim=arch.head_dim,  # never derived from hidden ÷ heads after a cut
            mamba_n_heads=arch.mamba_num_heads, mamba_d_head=arch.mamba_head_dim,
            mamba_d_ssm=arch.mamba_intermediate,  # the Mamba width, explicit (not expand × hidden)
            vocab_size=arch.vocab_size, num_hidden_layers=arch.num_layers,
        )  # fmt: skip

    def validate(self, arch, need) -> None:
        need(set(arch.pattern) == {ATTENTION}, "falcon_h1 layers are all alike (attention ∥ Mamba-2, then an MLP)")
        need(arch.intermediate_size > 0, "intermediate_size must be positive")
        need(arch.mamba_num_heads > 0 and arch.mamba_head_dim > 0, "mamba heads and head dim must be positive")
        need(arch.mamba_num_heads % arch.n_groups == 0,
             f"mamba_n_heads ({arch.mamba_num_heads}) is not a multiple of mamba_n_groups ({arch.n_groups})")

    def components(self, char: str) -> frozenset[str]:
        return frozenset({ATTENTION_C, MAMBA_C, FFN_C})

    # ------------------------------------------------------------------ parameters
    def layer_params(self, arch, char: str) -> int:
        a = arch
        mamba = mamba2_params(a, norm=self._gated_norm(a), out_bias=self._out_bias(a))
        attn = parts.attention_params(a, a.hidden_size, bias=a.qkv_bias, o_bias=a.o_bias)
        return 2 * a.hidden_size + mamba + attn + parts.gated_mlp_params(a, bias=a.mlp_bias)

    def params(self, arch) -> dict[str, int]:
        a, h, n = arch, arch.hidden_size, arch.num_layers
        return parts.params_table(
            a, COMPONENTS,
            mamba=n * mamba2_params(a, norm=self._gated_norm(a), out_bias=self._out_bias(a)),
            attention=n * parts.attention_params(a, h, bias=a.qkv_bias, o_bias=a.o_bias),
            mlp=n * parts.gated_mlp_params(a, bias=a.mlp_bias),
            norm=h * (2 * n + 1),
        )  # fmt: skip

    # ------------------------------------------------------------------ tensors
    def layer_specs(self, arch, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
        a, h, p = arch, one(HIDDEN, arch.hidden_size), f"layers.{i}."
        return [
            TensorSpec(p + "input_layernorm.weight", i, (h,)),
            TensorSpec(p + "pre_ff_layernorm.weight", i, (h,)),
            *mamba2_specs(a, p + "mamba.", i, norm=self._gated_norm(a), out_bias=self._out_bias(a)),
            *parts.attention_specs(a, p + "self_attn.", i, h, h, bias=a.qkv_bias, o_bias=a.o_bias),
            *parts.gated_mlp_specs(a, p + "feed_forward.", i, h, bias=a.mlp_bias),
        ]

    def model_specs(self, arch, layout: str = "checkpoint") -> list[TensorSpec]:
        return parts.stacked_model_specs(self, arch, layout, "final_layernorm")

    def norm_readers_by_layer(self, arch):
        return lambda i: {"input_layernorm": ("mamba", "self_attn"), "pre_ff_layernorm": ("feed_forward",)}

    # ------------------------------------------------------------------ running blocks
    def hook_points(self, arch, char: str) -> list[HookPoint]:
        # input_layernorm feeds both mixers (each through a scalar multiplier); in_proj's output is taken
        # before `mup_vector` (a per-segment scalar: the ranking inside the x-slice is the same).
        return [HookPoint("hidden", "input_layernorm"), HookPoint("hidden", "pre_ff_layernorm", tag="post"),
                HookPoint("mamba", "mamba.in_proj"), HookPoint("attention", "self_attn.o_proj"),
                HookPoint("ffn", "feed_forward.down_proj")]

    def prepare_blocks(self, model, config, h) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = {"config": config, "inputs_embeds": h, "attention_mask": None, "cache": None, "position_ids": pos}
        return {"mask": create_causal_mask(**kw), "mamba_mask": create_recurrent_attention_mask(**kw),
                "position_ids": pos, "rope": model.model.rotary_emb(h, pos)}

    def call_block(self, blk, i: int, h, kw: dict):
        return blk(h, attention_mask=kw["mask"], mamba_attention_mask=kw["mamba_mask"],
                   position_ids=kw["position_ids"], position_embeddings=kw["rope"])[0]

    def embedding_scale(self, config) -> float:
        return float(getattr(config, "embedding_multiplier", 1.0) or 1.0)

    def logits_divisor(self, config) -> float:
        # The model multiplies by `lm_head_multiplier`; bit-equal to this division when it is a power of 2.
        return 1.0 / float(getattr(config, "lm_head_multiplier", 1.0) or 1.0)

    def fix_meta_model(self, model, config, device) -> None:
        import torch
        from transformers.models.falcon_h1.modeling_falcon_h1 import compute_mup_vector

        rope = model.model.rotary_emb
        with torch.device("cpu"):  # not the meta device the model was built on
            model.model.rotary_emb = type(rope)(config=config).to(device)
            mup = compute_mup_vector(config).to(device)
        for layer in model.model.layers:  # non-persistent: never in a checkpoint, rebuilt from the config
            layer.mamba.register_buffer("mup_vector", mup.clone(), persistent=False)
