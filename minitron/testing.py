"""Tiny random models (Nemotron-H and the dense families) for tests, examples and benchmarks.

`tiny_config()` is a 9-layer hybrid with every layer type (Mamba-2, MLP, attention with GQA, MoE),
several Mamba groups, hidden size 64; `make_tiny_model_dir()` writes it as an ordinary Hugging Face
directory (sharded safetensors + index, config, generation config and a byte-level BPE tokenizer
trained offline on a built-in paragraph), which every command reads like a real checkpoint.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

TINY_PATTERN = "M-M*EM-*M"

_CORPUS = """
The quick brown fox jumps over the lazy dog. A state space model keeps a running summary of the
sequence it has read, while attention looks back at every token. Hybrid models mix both: most layers
are Mamba layers, a few are attention layers, and feed-forward layers sit between them. Pruning removes
the parts of a model that matter least; distillation teaches the smaller model to imitate the larger
one. Numbers such as 0 1 2 3 4 5 6 7 8 9 10 100 1000 appear in text too, and so does punctuation:
commas, colons; semicolons! question marks? (parentheses) [brackets] {braces} "quotes" 'apostrophes'.
"""


# What every released Nemotron-H fixes: a conv bias and SiLU in Mamba-2, relu² MLPs, no projection biases.
NEMOTRON_H_FIXED = {"use_conv_bias": True, "mamba_hidden_act": "silu", "mamba_proj_bias": False,
                    "mlp_hidden_act": "relu2", "mlp_bias": False, "use_bias": False}  # fmt: skip


def tiny_config(**overrides) -> dict:
    cfg = {
        "architectures": ["NemotronHForCausalLM"],
        "model_type": "nemotron_h",
        "vocab_size": 384,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "mamba_num_heads": 8,
        "mamba_head_dim": 12,
        "n_groups": 2,
        "ssm_state_size": 16,
        "conv_kernel": 4,
        "expand": 2,
        "chunk_size": 16,
        **NEMOTRON_H_FIXED,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 48,
        "n_shared_experts": 1,
        "n_group": 1,
        "topk_group": 1,
        "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "mamba_ssm_cache_dtype": "float32",
        "time_step_limit": [0.0, 1e30],
        "hybrid_override_pattern": TINY_PATTERN,
        "num_hidden_layers": len(TINY_PATTERN),
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    if "hybrid_override_pattern" in overrides:
        cfg["num_hidden_layers"] = len(cfg["hybrid_override_pattern"])
    return cfg


# Tiny dense transformers: GQA with 2 query heads per KV group, an explicit head_dim that hidden ÷ heads
# does not give (as in Mistral-NeMo), and each family's own detail switched on.
_DENSE_BASE = {
    "vocab_size": 384, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 12, "hidden_act": "silu",
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "initializer_range": 0.02,
    "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}  # fmt: skip
DENSE_TINY = {
    "llama": {"architectures": ["LlamaForCausalLM"], "attention_bias": True, "mlp_bias": True},
    "mistral": {"architectures": ["MistralForCausalLM"], "sliding_window": None},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": True},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False},
}


_HYBRID_BASE = {
    **_DENSE_BASE, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_expand": 2, "mamba_n_groups": 2,
    "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_chunk_size": 16, "mamba_conv_bias": True,
    "mamba_proj_bias": False, "attention_bias": True,
}  # fmt: skip
HYBRID_TINY = {
    # Mamba, attention, Mamba, Mamba; an MLP in every layer.
    "bamba": {"architectures": ["BambaForCausalLM"], "attn_layer_indices": [1], "mlp_bias": True},
    "granitemoehybrid": {
        "architectures": ["GraniteMoeHybridForCausalLM"], "layer_types": ["mamba", "attention", "mamba", "mamba"],
        "shared_intermediate_size": 96, "num_local_experts": 0, "num_experts_per_tok": 0,
        "position_embedding_type": "rope", "tie_word_embeddings": True, "embedding_multiplier": 2.0,
        "residual_multiplier": 0.5, "attention_multiplier": 0.1, "logits_scaling": 4.0,
    },
}
# Granite 4.0-H with routed experts (tiny / small): 4 experts of width 32, top-2, beside the shared MLP.
HYBRID_TINY["granitemoehybrid_moe"] = {**HYBRID_TINY["granitemoehybrid"], "model_type": "granitemoehybrid",
                                       "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32}


def tiny_hybrid_config(model_type: str = "bamba", **overrides) -> dict:
    """A 4-layer random Mamba-2 hybrid (bamba, granitemoehybrid, granitemoehybrid_moe with routed experts):
    `M*MM`, hidden 64, 2 Mamba groups."""
    cfg = {**_HYBRID_BASE, "model_type": model_type, **HYBRID_TINY[model_type]}
    cfg.update(overrides)
    return cfg


# Falcon-H1: a Mamba width (mamba_d_ssm 96) that is not expand × hidden, the optional gated norm on over
# 2 groups, an explicit head_dim, and µP multipliers that are not 1 (lm_head's a power of 2: see the family).
FALCON_H1_TINY = {
    **_DENSE_BASE, "architectures": ["FalconH1ForCausalLM"], "model_type": "falcon_h1", "num_hidden_layers": 3,
    "mamba_d_ssm": 96, "mamba_n_heads": 8, "mamba_d_head": 12, "mamba_n_groups": 2, "mamba_d_state": 16,
    "mamba_d_conv": 4, "mamba_chunk_size": 16, "mamba_expand": 2, "mamba_rms_norm": True,
    "mamba_norm_before_gate": False, "mamba_conv_bias": True, "mamba_proj_bias": False, "projectors_bias": False,
    "attention_bias": False, "mlp_bias": False, "embedding_multiplier": 2.0, "lm_head_multiplier": 0.25,
    "key_multiplier": 0.5, "attention_in_multiplier": 1.5, "attention_out_multiplier": 0.75,
    "ssm_in_multiplier": 1.25, "ssm_out_multiplier": 0.5, "ssm_multipliers": [0.5, 0.25, 0.75, 1.5, 0.5],
    "mlp_multipliers": [0.8, 0.6],
}  # fmt: skip


def tiny_falcon_h1_config(**overrides) -> dict:
    """A 3-layer random Falcon-H1 (attention ∥ Mamba-2 in each layer), hidden 64."""
    return {**FALCON_H1_TINY, **overrides}


# Zamba2: Mamba layers and hybrid layers calling 2 shared blocks (hybrid g uses block g % 2), LoRA adapters,
# rotary; tied embeddings (transformers ties the shared blocks only then, as in the released models).
ZAMBA2_TINY = {
    "architectures": ["Zamba2ForCausalLM"], "model_type": "zamba2", "vocab_size": 384, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 6,
    "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"], "num_attention_heads": 4,
    "num_key_value_heads": 4, "n_mamba_heads": 8, "mamba_expand": 2, "mamba_ngroups": 2, "mamba_d_state": 16,
    "mamba_d_conv": 4, "chunk_size": 16, "num_mem_blocks": 2, "use_shared_attention_adapter": True,
    "adapter_rank": 8, "use_mem_rope": True, "add_bias_linear": False, "tie_word_embeddings": True,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "initializer_range": 0.02, "pad_token_id": 0,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}  # fmt: skip


def tiny_zamba2_config(**overrides) -> dict:
    """A 6-layer random Zamba2 (`M*M*M*`: 3 hybrid layers over 2 shared blocks), hidden 64."""
    return {**ZAMBA2_TINY, **overrides}


def tiny_dense_config(model_type: str = "llama", **overrides) -> dict:
    """A 4-layer random dense model of one family (llama, mistral, qwen2, qwen3), hidden size 64."""
    cfg = {**_DENSE_BASE, "model_type": model_type, **DENSE_TINY[model_type]}
    cfg.update(overrides)
    return cfg


def build_tokenizer(vocab_size: int = 384, corpus: str = _CORPUS):
    """A byte-level BPE `PreTrainedTokenizerFast` trained offline; ids 0/1/2 are <pad>/<s>/</s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=1 << 30
    )


def build_model(cfg: dict | None = None, seed: int = 0):
    """A random model from a config dict (transformers' own class; Nemotron-H by default)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg or tiny_config())
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Give the norms and Mamba scalars some spread so that no unit is trivially tied with another.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", "layernorm.weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias") and cfg.get("model_type") != "nemotron_h":  # dense biases start at 0
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(("mixer.D", "mixer.dt_bias", "mamba.D", "mamba.dt_bias")):
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_tiny_model_dir(path, cfg: dict | None = None, seed: int = 0, max_shard_size: str = "200KB", model=None):
    """Write a tiny random model (Nemotron-H unless `cfg` says otherwise) as a Hugging Face directory (sharded safetensors); return its path."""
    path = Path(path)
    cfg = dict(cfg or tiny_config())
    model = model if model is not None else build_model(cfg, seed=seed)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    tokenizer = build_tokenizer(vocab_size=cfg["vocab_size"])
    tokenizer.save_pretrained(path)
    if "hybrid_override_pattern" in cfg:
        # Keep the config in the legacy spelling NVIDIA's checkpoints use (`hybrid_override_pattern`).
        saved = json.loads((path / "config.json").read_text())
        saved["hybrid_override_pattern"] = cfg["hybrid_override_pattern"]
        (path / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    return path


@contextmanager
def blocks_skipped(model, skipped):
    """`model` with the blocks `skipped` replaced by the identity in transformers' own forward loop
    (what a dropped block leaves behind); the blocks are put back on exit."""
    import torch

    class Skipped(torch.nn.Module):
        def __init__(self, block_type):
            super().__init__()
            self.block_type = block_type

        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    layers = model.model.layers
    originals = {i: layers[i] for i in skipped}
    for i, blk in originals.items():
        layers[i] = Skipped(blk.block_type)
    try:
        yield model
    finally:
        for i, blk in originals.items():
            layers[i] = blk
