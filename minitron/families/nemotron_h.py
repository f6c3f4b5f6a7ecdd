"""Nemotron-H (`nemotron_h`): Nemotron-H, Nemotron Nano 2, Nemotron 3 Nano (MoE).

Each block is `x + mixer(norm(x))` with one mixer per block, as in `hybrid_override_pattern`:
Mamba-2 (`M`, layout in `mamba2.py`), MLP (`-`, ungated: up/down), attention (`*`) or MoE (`E`).
Tensor layouts (transformers' `nemotron_h`):
    q_proj.weight    [nq · d]  x hidden        o_proj.weight  hidden x [nq · d]
    k_proj/v_proj    [nkv · d] x hidden
    up_proj.weight   [ffn] x hidden            down_proj.weight  hidden x [ffn]

transformers' `NemotronHForCausalLM` declares no tied weights: `lm_head` is its own tensor even
when the config says `tie_word_embeddings` (checked against the built model in the tests).
"""

from __future__ import annotations

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
from minitron.families.mamba2 import mamba2_params, mamba2_specs
from minitron.families.parts import written_config
from minitron.models.layer_types import ATTENTION, MAMBA, MLP, MOE, pattern_from_config, set_pattern
from minitron.models.tensors import EXPERTS, FFN, HIDDEN, KV, MOE_FFN, SHARED_FFN, Q, TensorSpec, fixed, one

COMPONENTS = ("embedding", "lm_head", "mamba", "attention", "mlp", "moe", "norm")


class NemotronH(Family):
    name = "nemotron_h"
    modules = ModuleNames(embedding="embeddings", final_norm="norm_f")
    _components = {MAMBA: frozenset({MAMBA_C}), MLP: frozenset({FFN_C}), ATTENTION: frozenset({ATTENTION_C}),
                   MOE: frozenset({MOE_C})}

    # ------------------------------------------------------------------ config <-> architecture
    def read(self, cfg: dict):

        pattern = pattern_from_config(cfg)
        get = config_getter(cfg)
        n_heads = int(get("num_attention_heads", 1 if ATTENTION not in pattern else None))
        moe = MOE in pattern
        return dict(
            family=self.name,
            pattern=pattern,
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size", 0 if MLP not in pattern else None)),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            # transformers' NemotronHConfig defaults `head_dim` to 128 (not hidden ÷ heads) and ignores the
            # `attention_head_dim` of NVIDIA's remote-code configs.
            head_dim=int(cfg.get("head_dim") or 128),
            mamba_num_heads=int(get("mamba_num_heads", 0 if MAMBA not in pattern else None)),
            mamba_head_dim=int(get("mamba_head_dim", 0 if MAMBA not in pattern else None)),
            n_groups=int(get("n_groups", 1, "mamba_n_groups")),
            ssm_state_size=int(get("ssm_state_size", 128)),
            conv_kernel=int(get("conv_kernel", 4, "mamba_d_conv")),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            use_conv_bias=bool(cfg.get("use_conv_bias", cfg.get("mamba_conv_bias", True))),
            use_bias=bool(cfg.get("use_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
            mamba_ssm_cache_dtype=str(cfg.get("mamba_ssm_cache_dtype") or "float32"),
            n_routed_experts=int(cfg.get("n_routed_experts") or 0) if moe else 0,
            moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0) if moe else 0,
            moe_shared_expert_intermediate_size=int(cfg.get("moe_shared_expert_intermediate_size") or 0) if moe else 0,
            n_shared_experts=int(cfg.get("n_shared_experts") or 0) if moe else 0,
            moe_latent_size=cfg.get("moe_latent_size") if moe else None,
            # transformers' NemotronHConfig defaults: top-2, one routing group.
            num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 2) if moe else 0,
            n_group=int(cfg.get("n_group") or 1) if moe else 1,
            topk_group=int(cfg.get("topk_group") or 1) if moe else 1,
            raw=dict(cfg),
        )

    def write(self, arch) -> dict:
        cfg = written_config(
            arch,
            # NVIDIA's remote code writes `attention_head_dim`, which transformers ignores: write `head_dim`.
            head_dim=arch.head_dim,
            mamba_num_heads=arch.mamba_num_heads,
            mamba_head_dim=arch.mamba_head_dim,
            n_groups=arch.n_groups,
            vocab_size=arch.vocab_size,
        )
        if arch.n_routed_experts:
            cfg.update(
                n_routed_experts=arch.n_routed_experts,
                moe_intermediate_size=arch.moe_intermediate_size,
                moe_shared_expert_intermediate_size=arch.moe_shared_expert_intermediate_size,
                num_experts_per_tok=arch.num_experts_per_tok,
            )
        cfg.pop("mamba_n_groups", None)
        # `expand` is informational in nemotron_h; keep it consistent with the Mamba width.
        if "expand" in cfg and arch.hidden_size and arch.mamba_num_heads:
            ratio = arch.mamba_num_heads * arch.mamba_head_dim / arch.hidden_size
            if float(ratio).is_integer():
                cfg["expand"] = int(ratio)
        return set_pattern(cfg, arch.pattern)

    def validate(self, arch, need) -> None:
        if MAMBA in arch.pattern:
            need(arch.mamba_num_heads > 0 and arch.mamba_head_dim > 0, "mamba heads and head dim must be positive")
            need(arch.mamba_num_heads % arch.n_groups == 0,
                 f"mamba_num_heads ({arch.mamba_num_heads}) is not a multiple of n_groups ({arch.n_groups})")
        if MLP in arch.pattern:
            need(arch.intermediate_size > 0, "intermediate_size must be positive")
        if MOE in arch.pattern:
            e, k, g = arch.n_routed_experts, arch.num_experts_per_tok, arch.n_group
            need(e > 0 and arch.moe_intermediate_size > 0, "n_routed_experts and moe_intermediate_size must be positive")
            need(e % g == 0, f"n_routed_experts ({e}) is not a multiple of n_group ({g})")
            # The router scores each group by its top-2 experts (`topk(2)` in transformers' NemotronHTopkRouter).
            need(e // g >= 2, f"n_routed_experts ({e}) leaves fewer than 2 experts in each of the {g} groups")
            need(1 <= arch.topk_group <= g, f"topk_group ({arch.topk_group}) must be in 1..n_group ({g})")
            need(1 <= k <= arch.topk_group * (e // g),
                 f"num_experts_per_tok ({k}) must be in 1..{arch.topk_group * (e // g)} "
                 f"(the experts of topk_group={arch.topk_group} of {g} groups of {e // g})")

    def components(self, char: str) -> frozenset[str]:
        return self._components[char]

    # ------------------------------------------------------------------ parameters
    def layer_params(self, arch, char: str) -> int:
        """Parameters of one block of this type, its pre-norm included."""
        a, h = arch, arch.hidden_size
        norm = h
        if char == MAMBA:
            return norm + mamba2_params(a)
        if char == ATTENTION:
            q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
            return norm + h * (q + 2 * kv) + q * h
        if char == MLP:
            return norm + _mlp_params(a, a.intermediate_size)
        if char == MOE:
            experts = a.n_routed_experts * self.expert_params(a)
            router = a.n_routed_experts * h
            shared = _mlp_params(a, a.moe_shared_expert_intermediate_size)
            lat = a.moe_latent_size
            latent = 2 * h * lat + ((lat + h) if a.mlp_bias else 0) if lat else 0
            return norm + experts + router + shared + latent
        raise ValueError(char)

    def expert_params(self, arch) -> int:
        """Parameters of one routed expert (up and down projections, no bias)."""
        return 2 * (arch.moe_latent_size or arch.hidden_size) * arch.moe_intermediate_size

    def active_params(self, arch) -> dict[str, int]:
        """`params()` with the routed experts each token skips taken out of `moe`: per MoE layer, all but
        `num_experts_per_tok` of the `n_routed_experts` (the router, the shared expert and the latent
        projections run for every token)."""
        out = self.params(arch)
        idle = arch.count(MOE) * (arch.n_routed_experts - arch.num_experts_per_tok) * self.expert_params(arch)
        out["moe"] -= idle
        out["total"] -= idle
        return out

    def moe_unit_counts(self, arch) -> dict[str, int]:
        moe = MOE in arch.pattern
        return {"experts": arch.n_routed_experts if moe else 0,
                "moe_ffn": arch.moe_intermediate_size if moe else 0,
                "shared_expert_ffn": arch.moe_shared_expert_intermediate_size if moe else 0,
                "experts_per_token": arch.num_experts_per_tok if moe else 0}

    def params(self, arch) -> dict[str, int]:
        h = arch.hidden_size
        out = {c: 0 for c in COMPONENTS}
        out["embedding"] = arch.vocab_size * h
        out["lm_head"] = arch.vocab_size * h  # never tied (see the module docstring)
        out["norm"] = h * (arch.num_layers + 1)  # block pre-norms + final norm_f
        names = {MAMBA: "mamba", ATTENTION: "attention", MLP: "mlp", MOE: "moe"}
        for c in arch.pattern:
            out[names[c]] += self.layer_params(arch, c) - h
        out["total"] = sum(out[c] for c in COMPONENTS)
        return out

    # ------------------------------------------------------------------ tensors
    def layer_specs(self, arch, i: int, char: str, layout: str = "checkpoint") -> list[TensorSpec]:
        """`layout="checkpoint"` names MoE experts as stored on disk (`experts.{j}.up_proj.weight`);
        `layout="module"` as transformers' module holds them (`experts.up_proj`, fused [E, ...])."""
        a = arch
        h = one(HIDDEN, a.hidden_size)
        p = f"layers.{i}."
        specs = [TensorSpec(p + "norm.weight", i, (h,))]
        m = p + "mixer."
        if char == MAMBA:
            specs += mamba2_specs(a, m, i)
        elif char == ATTENTION:
            q = one(Q, a.num_attention_heads * a.head_dim)
            kv = one(KV, a.num_key_value_heads * a.head_dim)
            specs += [
                TensorSpec(m + "q_proj.weight", i, (q, h)),
                TensorSpec(m + "k_proj.weight", i, (kv, h)),
                TensorSpec(m + "v_proj.weight", i, (kv, h)),
                TensorSpec(m + "o_proj.weight", i, (h, q)),
            ]
        elif char == MLP:
            specs += _mlp_specs(m, i, h, one(FFN, a.intermediate_size), a.mlp_bias)
        elif char == MOE:
            specs += _moe_specs(a, m, i, h, layout)
        else:  # pragma: no cover - layer_char() rejects anything else
            raise ValueError(char)
        return specs

    def model_specs(self, arch, layout: str = "checkpoint") -> list[TensorSpec]:
        vocab, h = fixed(arch.vocab_size), one(HIDDEN, arch.hidden_size)
        specs = [TensorSpec("embeddings.weight", None, (vocab, h))]
        for i, c in enumerate(arch.pattern):
            specs += self.layer_specs(arch, i, c, layout)
        specs.append(TensorSpec("norm_f.weight", None, (h,)))
        specs.append(TensorSpec("lm_head.weight", None, (vocab, h)))
        return specs

    def norm_readers_by_layer(self, arch):
        return lambda i: {"norm": ("mixer",)}  # one pre-norm per block, read by its mixer

    # ------------------------------------------------------------------ running blocks
    def hook_points(self, arch, char: str) -> list[HookPoint]:
        own = {MLP: [HookPoint("ffn", "mixer.down_proj")], ATTENTION: [HookPoint("attention", "mixer.o_proj")],
               MAMBA: [HookPoint("mamba", "mixer.in_proj")],
               MOE: [HookPoint("experts", "mixer.experts"), HookPoint("shared_ffn", "mixer.shared_experts.down_proj")],
               }[char]
        return [HookPoint("hidden", "norm"), *own]

    def prepare_blocks(self, model, config, h) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = {"config": config, "inputs_embeds": h, "attention_mask": None, "cache": None, "position_ids": pos}
        masks = {"full_attention": create_causal_mask(**kw), "linear_attention": create_recurrent_attention_mask(**kw)}
        return {"masks": masks, "position_ids": pos}

    def call_block(self, blk, i: int, h, kw: dict):
        return blk(h, attention_mask=kw["masks"].get(blk.block_type), position_ids=kw["position_ids"])


def _mlp_params(a, ffn: int) -> int:
    return 2 * a.hidden_size * ffn + ((ffn + a.hidden_size) if a.mlp_bias else 0)


def _mlp_specs(m: str, i: int, h, ffn, bias: bool) -> list[TensorSpec]:
    specs = [TensorSpec(m + "up_proj.weight", i, (ffn, h)), TensorSpec(m + "down_proj.weight", i, (h, ffn))]
    if bias:
        specs += [TensorSpec(m + "up_proj.bias", i, (ffn,)), TensorSpec(m + "down_proj.bias", i, (h,))]
    return specs


def _moe_specs(a, m: str, i: int, h, layout: str) -> list[TensorSpec]:
    """Routed experts ([E] x up [f, inner] / down [inner, f]), router rows and correction bias (one per
    expert), the shared expert (its own neurons) and a latent MoE's projections (`inner` = latent, fixed)."""
    n_exp, f = one(EXPERTS, a.n_routed_experts), one(MOE_FFN, a.moe_intermediate_size)
    inner = fixed(a.moe_latent_size) if a.moe_latent_size else h
    if layout == "module":  # transformers' fused layout: [E, f, inner] and [E, inner, f]
        specs = [
            TensorSpec(m + "experts.up_proj", i, (n_exp, f, inner), stacked=True),
            TensorSpec(m + "experts.down_proj", i, (n_exp, inner, f), stacked=True),
        ]
    else:
        specs = []
        for j in range(a.n_routed_experts):
            specs += [
                TensorSpec(m + f"experts.{j}.up_proj.weight", i, (f, inner), expert=j),
                TensorSpec(m + f"experts.{j}.down_proj.weight", i, (inner, f), expert=j),
            ]
    specs += [
        TensorSpec(m + "gate.weight", i, (n_exp, h)),
        TensorSpec(m + "gate.e_score_correction_bias", i, (n_exp,)),
    ]
    specs += _mlp_specs(m + "shared_experts.", i, h, one(SHARED_FFN, a.moe_shared_expert_intermediate_size),
                        a.mlp_bias)
    if a.moe_latent_size:
        lat = fixed(a.moe_latent_size)
        specs += [TensorSpec(m + "fc1_latent_proj.weight", i, (lat, h)),
                  TensorSpec(m + "fc2_latent_proj.weight", i, (h, lat))]
        if a.mlp_bias:
            specs += [TensorSpec(m + "fc1_latent_proj.bias", i, (lat,)),
                      TensorSpec(m + "fc2_latent_proj.bias", i, (h,))]
    return specs

