"""`Architecture`: what a model is, read from its config.json by its family (`minitron.families`).

Everything here is plain arithmetic on config values: no weights are touched. The parameter
accounting (in the family module) equals the sum over the parameters of transformers' own model
built from the same config (tested on the meta device for every reference config).

The layer pattern has one character per block (`M` Mamba-2, `-` MLP, `*` attention, `E` MoE); which
components a block of each character holds is the family's (a Llama block `*` holds attention and
an MLP), so the shared code asks `attention_layers()`, `ffn_layers()`, `mamba_layers()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from minitron.errors import InputError


@dataclass(frozen=True)
class Architecture:
    pattern: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    mamba_num_heads: int
    mamba_head_dim: int
    n_groups: int
    ssm_state_size: int
    conv_kernel: int
    tie_word_embeddings: bool = False
    use_conv_bias: bool = True
    use_bias: bool = False  # Mamba in_proj / out_proj bias
    mlp_bias: bool = False
    max_position_embeddings: int = 4096
    mamba_ssm_cache_dtype: str = "float32"
    # MoE layers (`E`); unused when the pattern has none.
    n_routed_experts: int = 0
    moe_intermediate_size: int = 0
    moe_shared_expert_intermediate_size: int = 0
    n_shared_experts: int = 0
    moe_latent_size: int | None = None
    num_experts_per_tok: int = 0  # the router's top-k
    n_group: int = 1  # group-limited routing: experts in `n_group` equal consecutive groups ...
    topk_group: int = 1  # ... of which each token may use `topk_group`
    # Which `minitron.families` module reads and writes this model (the config's model_type family).
    family: str = "nemotron_h"
    # Attention details of the dense families: biases of q/k/v and of o_proj, RMSNorm of q and k per head.
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    # Per-layer attention types when the config lists them (`layer_types` of Qwen2/Qwen3); cut with depth.
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None  # attention window of the layers that have one (dense families)
    # The raw config dict this was read from (kept so a pruned config can be written back).
    raw: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        from minitron.families import family_for_config

        if not isinstance(cfg, dict):
            raise InputError("config.json must hold a JSON object")
        arch = cls(**family_for_config(cfg).read(cfg))
        arch.validate()
        return arch

    @classmethod
    def from_path(cls, path: str | Path) -> Architecture:
        """A model directory, or a config.json file (or a directory holding only one)."""
        return cls.from_config(read_config(path))

    @property
    def impl(self):
        """The `minitron.families.Family` of this model."""
        from minitron.families import get_family

        return get_family(self.family)

    def validate(self) -> None:
        """Structural consistency; errors name the config key at fault."""
        def need(ok: bool, msg: str):
            if not ok:
                raise InputError(f"config.json: {msg}")

        need(len(self.pattern) > 0, "the layer pattern is empty")
        need(self.hidden_size > 0 and self.vocab_size > 0, "hidden_size and vocab_size must be positive")
        if self.attention_layers():
            need(self.num_attention_heads > 0 and self.num_key_value_heads > 0, "attention heads must be positive")
            need(
                self.num_attention_heads % self.num_key_value_heads == 0,
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})",
            )
        self.impl.validate(self, need)

    def with_(self, **changes) -> Architecture:
        """A copy with some dimensions (or the pattern) changed; validated."""
        arch = replace(self, **changes)
        arch.validate()
        return arch

    def to_config(self) -> dict:
        """The config dict of this architecture: the original config with sizes and layers rewritten."""
        return self.impl.write(self)

    # ------------------------------------------------------------------ layers
    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    def layers_of(self, char: str) -> list[int]:
        """0-based indices of the layers of one type."""
        return [i for i, c in enumerate(self.pattern) if c == char]

    def count(self, char: str) -> int:
        return self.pattern.count(char)

    def layers_with(self, component: str) -> list[int]:
        """0-based indices of the layers holding a component (`attention`, `ffn`, `mamba`, `moe`)."""
        fam = self.impl
        return [i for i, c in enumerate(self.pattern) if component in fam.layer_components(self, c)]

    def attention_layers(self) -> list[int]:
        return self.layers_with("attention")

    def ffn_layers(self) -> list[int]:
        """Layers with an MLP whose neurons are the `ffn` axis (an MoE's shared expert is not one)."""
        return self.layers_with("ffn")

    def mamba_layers(self) -> list[int]:
        return self.layers_with("mamba")

    @property
    def mamba_intermediate(self) -> int:  # H·P
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:  # x | B | C
        return self.mamba_intermediate + 2 * self.n_groups * self.ssm_state_size

    @property
    def mamba_in_proj_dim(self) -> int:  # z | x | B | C | dt
        return self.mamba_intermediate + self.mamba_conv_dim + self.mamba_num_heads

    # ------------------------------------------------------------------ parameters
    def layer_params(self, char: str) -> int:
        """Parameters of one block of this type, its norms included."""
        return self.impl.layer_params(self, char)

    def params(self) -> dict[str, int]:
        """Exact parameter count per component, and `total` (a tied tensor counted once)."""
        return self.impl.params(self)

    @property
    def total_params(self) -> int:
        return self.params()["total"]

    def active_params(self) -> dict[str, int]:
        """Parameters one token uses, per component and `total`: everything but the routed experts,
        plus `num_experts_per_tok` of them in each MoE layer (equal to `params()` for a dense model)."""
        return self.impl.active_params(self)

    @property
    def total_active_params(self) -> int:
        return self.active_params()["total"]

    def moe_layers(self) -> list[int]:
        return self.layers_with("moe")

    # ------------------------------------------------------------------ prunable units
    def unit_counts(self) -> dict[str, int]:
        """How many units each prunable axis has (per layer where the axis is per layer; 0: none of its layers)."""
        from minitron.axes import AXES

        return {**{ax.unit: ax.units(self) for ax in AXES}, "layers": self.num_layers}


def read_config(path: str | Path) -> dict:
    """Read config.json from a model directory or a path to the file itself."""
    from minitron.hub import resolve_model_path

    p = resolve_model_path(path)
    cfg_path = p / "config.json" if p.is_dir() else p
    if not cfg_path.is_file():
        raise InputError(f"{p} has no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path}: malformed JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    return cfg
