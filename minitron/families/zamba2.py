"""Zamba2 (`zamba2`): Mamba-2 layers, and hybrid layers that first call a *shared* transformer block.

Layers (transformers' `modeling_zamba2.py`, 5.24; pattern `M` for "mamba" / "linear_attention", `*`
for "hybrid"):

    M   x = x + mamba(input_layernorm(x))                                  (`Zamba2MambaDecoderLayer`)
    *   t = shared_transformer([x | e], layer_idx)                         e: the token embeddings
        x = x + mamba_decoder.mamba(mamba_decoder.input_layernorm(x + linear(t)))

    shared_transformer (one module per `num_mem_blocks`, tied: hybrid layer g uses block g % num_mem_blocks)
        y = input_layernorm([x | e])                          RMSNorm over 2 × hidden channels
        y = self_attn(y) + per-layer LoRA on q, k, v          q/k/v: [heads · d] x 2·hidden, d = 2·hidden / heads
        t = feed_forward(pre_ff_layernorm(o_proj(y)))         gate_up_proj [gate (F) | up (F)] x hidden
                                                              (+ a per-layer LoRA on gate_up), down_proj

    checkpoint: the shared block is stored once, under the first hybrid layer that uses it
    (`layers.5.shared_transformer.*` in Zamba2-1.2B); the model ties `layers.11.shared_transformer`
    and the others to it (`_tied_weights_keys`). Its LoRA adapters are lists indexed by the hybrid
    layer's position (`linear_q_adapter_list.{g}`, ranks `adapter_rank`).

The Mamba mixer is `mamba2.py`'s layout (`in_proj` [z | x | B | C | dt], conv [x | B | C], gated
norm over `mamba_ngroups` groups), except that conv1d always has a bias and in/out_proj's bias is
`add_bias_linear`. The config *derives* `mamba_headdim = mamba_expand × hidden / n_mamba_heads`,
`attention_head_dim = 2 × hidden / heads` and `attention_hidden_size = 2 × hidden` (any stored value
is overwritten), so d_inner does follow expand × hidden here.

What is cut, and what is refused (`unsupported_axes`, `fixed_layer_types`):

- depth of Mamba layers (`M`): sound; `layers_block_type` is rewritten, the hybrid layers renumbered
  (their stored shared block moves with the first of them).
- hybrid layers (`*`) are never dropped: the shared block's LoRA adapters are indexed by hybrid
  position and the block-to-layer cycle (g % num_mem_blocks) would shift.
- hidden: tied through the shared block - it reads [hidden | embeddings] and its head dim is
  2 × hidden / heads, so a hidden cut needs the heads of the shared block cut in step, once for every
  hybrid layer; minitron's plan cuts heads per layer. Refused.
- attention / KV heads, FFN: the shared block is one module for every hybrid layer (one cut would
  have to serve all of them); the plan cuts per layer. Refused.
- Mamba heads / head dim: the config re-derives the head dim from expand × hidden / heads, so heads
  cannot change without the hidden size. Refused.
"""

from __future__ import annotations

from minitron.families.base import ATTENTION_C, FFN_C, Family, HookPoint, MAMBA_C, ModuleNames, config_getter
from minitron.families.mamba2 import mamba2_params, mamba2_specs
from minitron.families.parts import stacked_model_specs
from minitron.models.layer_types import ATTENTION, MAMBA
from minitron.models.tensors import FFN, HIDDEN, KV, Q, TensorSpec, fixed, one

COMPONENTS = ("embedding", "lm_head", "mamba", "attention", "mlp", "adapters", "norm")
_TYPES = {"mamba": MAMBA, "linear_attention": MAMBA, "hybrid": ATTENTION}


class Zamba2(Family):
    name = "zamba2"
    model_types = ("zamba2",)
    modules = ModuleNames(embedding="embed_tokens", final_norm="final_layernorm")

    # ------------------------------------------------------------------ config <-> architecture
    def read(self, cfg: dict):
        from minitron.errors import InputError

        get = config_getter(cfg)
        n = int(get("num_hidden_layers", 54))
        types = cfg.get("layers_block_type")
        if types is None:  # Zamba2Config's default 54-layer pattern
            types = ["mamba"] + (["mamba"] * 5 + ["hybrid"]) * 7 + ["mamba"] * 4 + ["hybrid"] + ["mamba"] * 3 \
                + ["hybrid"] + ["mamba"] * 2
        if not isinstance(types, list) or any(t not in _TYPES for t in types):
            raise InputError("config.json: `layers_block_type` must list 'mamba' / 'hybrid' layers")
        if len(types) != n:
            raise InputError(f"config.json: `layers_block_type` lists {len(types)} layers, num_hidden_layers is {n}")
        hidden, heads = int(get("hidden_size", 2560)), int(get("num_attention_heads", 32))
        m_heads, expand = int(get("n_mamba_heads", 8)), int(get("mamba_expand", 2))
        return dict(
            family=self.name,
            pattern="".join(_TYPES[t] for t in types),
            vocab_size=int(get("vocab_size", 32000)),
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=2 * hidden // heads,  # derived by Zamba2Config (attention_head_dim)
            mamba_num_heads=m_heads,
            mamba_head_dim=expand * hidden // m_heads,  # derived by Zamba2Config (mamba_headdim)
            n_groups=int(get("mamba_ngroups", 1)),
            ssm_state_size=int(get("mamba_d_state", 64)),
            conv_kernel=int(get("mamba_d_conv", 4)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            use_conv_bias=True,  # Zamba2MambaMixer builds conv1d with bias=True whatever `use_conv_bias` says
            use_bias=bool(cfg.get("add_bias_linear", False)),
            mlp_bias=bool(cfg.get("add_bias_linear", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
            mamba_ssm_cache_dtype=str(cfg.get("mamba_ssm_cache_dtype") or "float32"),
            raw=dict(cfg),
        )

    def write(self, arch) -> dict:
        cfg = dict(arch.raw)
        cfg.update(num_hidden_layers=arch.num_layers, vocab_size=arch.vocab_size,
                   layers_block_type=["hybrid" if c == ATTENTION else "mamba" for c in arch.pattern])
        cfg["hybrid_layer_ids"] = arch.layers_of(ATTENTION)  # informational; the config re-derives it
        return cfg

    def validate(self, arch, need) -> None:
        need(set(arch.pattern) <= {MAMBA, ATTENTION}, "zamba2 layers are Mamba-2 or hybrid")
        need(arch.mamba_num_heads * arch.mamba_head_dim == int(arch.raw.get("mamba_expand", 2)) * arch.hidden_size,
             "n_mamba_heads must divide mamba_expand × hidden_size")
        need(arch.mamba_num_heads % arch.n_groups == 0,
             f"n_mamba_heads ({arch.mamba_num_heads}) is not a multiple of mamba_ngroups ({arch.n_groups})")

    def components(self, char: str) -> frozenset[str]:
        # A hybrid layer calls the shared block (attention + MLP) and has its own Mamba mixer.
        return frozenset({MAMBA_C} if char == MAMBA else {MAMBA_C, ATTENTION_C, FFN_C})

    def unsupported_axes(self, arch) -> dict[str, str]:
        shared = "zamba2's shared transformer block serves every hybrid layer (one cut for all; the plan cuts per layer)"
        derived = "zamba2 derives the Mamba head dim as mamba_expand × hidden / n_mamba_heads (heads follow hidden)"
        return {
            "hidden_size": "zamba2's shared block reads [hidden | embeddings] with head dim 2 × hidden / heads: a hidden "
                           "cut needs its heads cut in step for every hybrid layer",
            "ffn_size": shared, "attention_heads": shared, "kv_heads": shared,
            "mamba_heads": derived, "mamba_head_dim": derived,
        }  # fmt: skip

    def fixed_layer_types(self, arch) -> dict[str, str]:
        return {ATTENTION: "zamba2 hybrid layers cannot be dropped: the shared block's LoRA adapters are indexed by "
                           "hybrid-layer position"}

    # ------------------------------------------------------------------ parameters
    def _stored_blocks(self, arch) -> dict[int, int]:
        """Hybrid layer -> block id, for the layers whose `shared_transformer` has its own parameters (and is
        stored in the checkpoint). Tied (`tie_word_embeddings`, as released): the first hybrid layer of each
        of the `num_mem_blocks` blocks. transformers ties the blocks only when it ties the embeddings, so
        with untied embeddings every hybrid layer has a block of its own."""
        n_b = int(arch.raw.get("num_mem_blocks", 1))
        hybrid = arch.layers_of(ATTENTION)
        return {i: g % n_b for g, i in enumerate(hybrid) if g < n_b or not arch.tie_word_embeddings}

    def _block_of(self, arch, i: int) -> tuple[int, int]:
        """(block id, the layer whose parameters hybrid layer `i` uses)."""
        hybrid, n_b = arch.layers_of(ATTENTION), int(arch.raw.get("num_mem_blocks", 1))
        g = hybrid.index(i)
        return g % n_b, (hybrid[g % n_b] if arch.tie_word_embeddings else i)

    def _adapter_slots(self, arch, b: int) -> list[int]:
        """Hybrid positions g whose adapters block b holds (`g % num_mem_blocks == b`, as transformers builds them)."""
        n_b = int(arch.raw.get("num_mem_blocks", 1))
        return [g for g in range(arch.count(ATTENTION)) if g % n_b == b]

    def _adapters(self, arch) -> bool:
        return bool(arch.raw.get("use_shared_attention_adapter", False))

    def layer_params(self, arch, char: str) -> int:
        """Parameters a layer owns (a hybrid layer: its Mamba mixer and `linear`; the shared block apart)."""
        h = arch.hidden_size
        return h + mamba2_params(arch) + (h * h if char == ATTENTION else 0)

    def params(self, arch) -> dict[str, int]:
        a, h, f = arch, arch.hidden_size, arch.intermediate_size
        stored = list(self._stored_blocks(a).values())
        n_blocks, n_hybrid = len(stored), a.count(ATTENTION)
        r = int(a.raw.get("adapter_rank", 128))
        q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
        lora = h * r + r * 2 * f  # gate_up adapter of each hybrid position (always built)
        if self._adapters(a):
            lora += (2 * h * r + r * q) + 2 * (2 * h * r + r * kv)  # q, k, v adapters (input [x | e])
        out = {
            "embedding": a.vocab_size * h,
            "lm_head": 0 if a.tie_word_embeddings else a.vocab_size * h,
            "mamba": a.num_layers * mamba2_params(a),
            # q/k/v read [x | e] (2h); o_proj writes h; plus each hybrid layer's own `linear` (h x h)
            "attention": n_blocks * (2 * h * (q + 2 * kv) + q * h) + n_hybrid * h * h,
            "mlp": n_blocks * (3 * h * f + ((2 * f + h) if a.mlp_bias else 0)),
            "adapters": sum(len(self._adapter_slots(a, b)) for b in stored) * lora,
            # every layer's (Mamba) input norm, the final norm; each block's input (2h) and pre-FF (h) norms
            "norm": h * (a.num_layers + 1) + n_blocks * 3 * h,
        }
        out["total"] = sum(out[c] for c in COMPONENTS)
        return out

    # ------------------------------------------------------------------ tensors
    def layer_specs(self, arch, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
        a, h, p = arch, one(HIDDEN, arch.hidden_size), f"layers.{i}."
        if char == MAMBA:
            return [TensorSpec(p + "input_layernorm.weight", i, (h,)), *mamba2_specs(a, p + "mamba.", i)]
        specs = [TensorSpec(p + "linear.weight", i, (h, h)),
                 TensorSpec(p + "mamba_decoder.input_layernorm.weight", i, (h,)),
                 *mamba2_specs(a, p + "mamba_decoder.mamba.", i)]
        b, owner = self._block_of(a, i)
        if layout == "module" or owner == i:  # the module lists every tie; the checkpoint stores it once
            specs += self._block_specs(a, p + "shared_transformer.", i, b)
        return specs

    def _block_specs(self, a, s: str, i: int, b: int) -> list[TensorSpec]:
        h, h2 = one(HIDDEN, a.hidden_size), ((HIDDEN, a.hidden_size), (HIDDEN, a.hidden_size))  # [x | e]
        q, kv, f = one(Q, a.num_attention_heads * a.head_dim), one(KV, a.num_key_value_heads * a.head_dim), \
            a.intermediate_size
        r = fixed(int(a.raw.get("adapter_rank", 128)))
        t = s + "self_attn."
        gate_up = ((FFN, f), (FFN, f))  # `torch.chunk(gate_up, 2)`: [gate | up]
        specs = [TensorSpec(s + "input_layernorm.weight", i, (h2,)),
                 TensorSpec(t + "q_proj.weight", i, (q, h2)), TensorSpec(t + "k_proj.weight", i, (kv, h2)),
                 TensorSpec(t + "v_proj.weight", i, (kv, h2)), TensorSpec(t + "o_proj.weight", i, (h, q)),
                 TensorSpec(s + "pre_ff_layernorm.weight", i, (h,)),
                 TensorSpec(s + "feed_forward.gate_up_proj.weight", i, (gate_up, h)),
                 TensorSpec(s + "feed_forward.down_proj.weight", i, (h, one(FFN, f)))]
        if a.mlp_bias:
            specs += [TensorSpec(s + "feed_forward.gate_up_proj.bias", i, (gate_up,)),
                      TensorSpec(s + "feed_forward.down_proj.bias", i, (h,))]
        for g in self._adapter_slots(a, b):
            m = s + f"feed_forward.gate_up_proj_adapter_list.{g}."
            specs += [TensorSpec(m + "0.weight", i, (r, h)), TensorSpec(m + "1.weight", i, (gate_up, r))]
            if self._adapters(a):
                for name, out in (("q", q), ("k", kv), ("v", kv)):
                    m = t + f"linear_{name}_adapter_list.{g}."
                    specs += [TensorSpec(m + "0.weight", i, (r, h2)), TensorSpec(m + "1.weight", i, (out, r))]
        return specs

    def model_specs(self, arch, layout: str = "checkpoint") -> list[TensorSpec]:
        return stacked_model_specs(self, arch, layout, "final_layernorm")

    def checkpoint_tensor(self, arch, canonical: str) -> str:
        """`layers.11.shared_transformer.X` -> `layers.5.shared_transformer.X` (where the tie is stored)."""
        head, sep, rest = canonical.partition(".shared_transformer.")
        if not sep:
            return canonical
        return f"layers.{self._block_of(arch, int(head.split('.')[1]))[1]}.shared_transformer.{rest}"

    # ------------------------------------------------------------------ running blocks
    def hook_points(self, arch, char: str) -> list[HookPoint]:
        if char == MAMBA:
            return [HookPoint("hidden", "input_layernorm"), HookPoint("mamba", "mamba.in_proj")]
        # Each hybrid layer holds its own `shared_transformer` module (parameters tied), so these statistics
        # are per call; they are informative only (the shared block's axes are refused).
        return [HookPoint("hidden", "mamba_decoder.input_layernorm"), HookPoint("mamba", "mamba_decoder.mamba.in_proj"),
                HookPoint("attention", "shared_transformer.self_attn.o_proj"),
                HookPoint("ffn", "shared_transformer.feed_forward.down_proj")]

    def prepare_blocks(self, model, config, h) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = {"config": config, "inputs_embeds": h, "attention_mask": None, "cache": None, "position_ids": pos}
        rope = getattr(model.model, "rotary_emb", None)
        return {"embeddings": h, "mask": create_causal_mask(**kw), "mamba_mask": create_recurrent_attention_mask(**kw),
                "position_ids": pos, "rope": rope(h, pos) if config.use_mem_rope else None}

    def call_block(self, blk, i: int, h, kw: dict):
        out = blk(h, kw["embeddings"], i, kw["mamba_mask"], kw["mask"], position_embeddings=kw["rope"],
                  position_ids=kw["position_ids"])
        return out[0] if isinstance(out, tuple) else out

    def fix_meta_model(self, model, config, device) -> None:
        import torch

        rope = getattr(model.model, "rotary_emb", None)
        if rope is not None:
            with torch.device("cpu"):
                model.model.rotary_emb = type(rope)(config).to(device)

