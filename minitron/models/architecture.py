"""`Architecture`: what a Nemotron-H model is, read from its config.json.

Everything here is plain arithmetic on config values: no weights are touched. The parameter
accounting equals the sum over the parameters of transformers' own `NemotronHForCausalLM`
built from the same config (tested on the meta device for the 12B and 9B references).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from minitron.errors import InputError
from minitron.models.layers import ATTENTION, MAMBA, MLP, MOE, pattern_from_config, set_pattern

SUPPORTED_MODEL_TYPES = ("nemotron_h",)
COMPONENTS = ("embedding", "lm_head", "mamba", "attention", "mlp", "moe", "norm")


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
    # The raw config dict this was read from (kept so a pruned config can be written back).
    raw: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        if not isinstance(cfg, dict):
            raise InputError("config.json must hold a JSON object")
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise InputError(
                f"unsupported model_type {model_type!r}: minitron works on Nemotron-H models (model_type 'nemotron_h')"
            )
        pattern = pattern_from_config(cfg)

        def get(key, default=None, *aliases):
            for k in (key, *aliases):
                if k in cfg and cfg[k] is not None:
                    return cfg[k]
            if default is None:
                raise InputError(f"config.json: missing `{key}`")
            return default

        n_heads = int(get("num_attention_heads", 1 if ATTENTION not in pattern else None))
        hidden = int(get("hidden_size"))
        arch = cls(
            pattern=pattern,
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size", 0 if MLP not in pattern else None)),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or hidden // max(n_heads, 1)),
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
            n_routed_experts=int(cfg.get("n_routed_experts") or 0) if MOE in pattern else 0,
            moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0) if MOE in pattern else 0,
            moe_shared_expert_intermediate_size=int(cfg.get("moe_shared_expert_intermediate_size") or 0)
            if MOE in pattern
            else 0,
            n_shared_experts=int(cfg.get("n_shared_experts") or 0) if MOE in pattern else 0,
            moe_latent_size=cfg.get("moe_latent_size") if MOE in pattern else None,
            raw=dict(cfg),
        )
        arch.validate()
        return arch

    @classmethod
    def from_path(cls, path: str | Path) -> Architecture:
        """A model directory, or a config.json file (or a directory holding only one)."""
        return cls.from_config(read_config(path))

    def validate(self) -> None:
        """Structural consistency; errors name the config key at fault."""
        def need(ok: bool, msg: str):
            if not ok:
                raise InputError(f"config.json: {msg}")

        need(len(self.pattern) > 0, "the layer pattern is empty")
        need(self.hidden_size > 0 and self.vocab_size > 0, "hidden_size and vocab_size must be positive")
        if ATTENTION in self.pattern:
            need(self.num_attention_heads > 0 and self.num_key_value_heads > 0, "attention heads must be positive")
            need(
                self.num_attention_heads % self.num_key_value_heads == 0,
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})",
            )
        if MAMBA in self.pattern:
            need(self.mamba_num_heads > 0 and self.mamba_head_dim > 0, "mamba heads and head dim must be positive")
            need(
                self.mamba_num_heads % self.n_groups == 0,
                f"mamba_num_heads ({self.mamba_num_heads}) is not a multiple of n_groups ({self.n_groups})",
            )
        if MLP in self.pattern:
            need(self.intermediate_size > 0, "intermediate_size must be positive")

    def with_(self, **changes) -> Architecture:
        """A copy with some dimensions (or the pattern) changed; validated."""
        arch = replace(self, **changes)
        arch.validate()
        return arch

    def to_config(self) -> dict:
        """The config dict of this architecture: the original config with sizes and pattern rewritten."""
        cfg = dict(self.raw)
        cfg.update(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            mamba_num_heads=self.mamba_num_heads,
            mamba_head_dim=self.mamba_head_dim,
            n_groups=self.n_groups,
            vocab_size=self.vocab_size,
        )
        cfg.pop("mamba_n_groups", None)
        # `expand` is informational in nemotron_h; keep it consistent with the Mamba width.
        if "expand" in cfg and self.hidden_size and self.mamba_num_heads:
            ratio = self.mamba_num_heads * self.mamba_head_dim / self.hidden_size
            if float(ratio).is_integer():
                cfg["expand"] = int(ratio)
        return set_pattern(cfg, self.pattern)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        return d

    # ------------------------------------------------------------------ layers
    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    def layers_of(self, char: str) -> list[int]:
        """0-based indices of the layers of one type."""
        return [i for i, c in enumerate(self.pattern) if c == char]

    def count(self, char: str) -> int:
        return self.pattern.count(char)

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
        """Parameters of one block of this type, its pre-norm included."""
        h = self.hidden_size
        norm = h
        if char == MAMBA:
            i, nh = self.mamba_intermediate, self.mamba_num_heads
            in_proj = h * self.mamba_in_proj_dim + (self.mamba_in_proj_dim if self.use_bias else 0)
            conv = self.mamba_conv_dim * self.conv_kernel + (self.mamba_conv_dim if self.use_conv_bias else 0)
            out_proj = i * h + (h if self.use_bias else 0)
            return norm + in_proj + conv + 3 * nh + i + out_proj  # 3·nh: dt_bias, A_log, D; i: gated norm
        if char == ATTENTION:
            q = self.num_attention_heads * self.head_dim
            kv = self.num_key_value_heads * self.head_dim
            return norm + h * (q + 2 * kv) + q * h
        if char == MLP:
            return norm + self._mlp_params(self.intermediate_size)
        if char == MOE:
            inner = self.moe_latent_size or h
            experts = self.n_routed_experts * 2 * inner * self.moe_intermediate_size
            router = self.n_routed_experts * h
            shared = self._mlp_params(self.moe_shared_expert_intermediate_size)
            latent = 2 * h * self.moe_latent_size + (
                (self.moe_latent_size + h) if self.mlp_bias else 0
            ) if self.moe_latent_size else 0
            return norm + experts + router + shared + latent
        raise ValueError(char)

    def _mlp_params(self, ffn: int) -> int:
        h = self.hidden_size
        return 2 * h * ffn + ((ffn + h) if self.mlp_bias else 0)

    def params(self) -> dict[str, int]:
        """Exact parameter count per component, and `total`."""
        h = self.hidden_size
        out = {c: 0 for c in COMPONENTS}
        out["embedding"] = self.vocab_size * h
        # transformers' NemotronHForCausalLM declares no tied weights: lm_head is its own tensor even
        # when the config says `tie_word_embeddings` (checked against the built model in the tests).
        out["lm_head"] = self.vocab_size * h
        out["norm"] = h * (self.num_layers + 1)  # block pre-norms + final norm_f
        names = {MAMBA: "mamba", ATTENTION: "attention", MLP: "mlp", MOE: "moe"}
        for c in self.pattern:
            out[names[c]] += self.layer_params(c) - h
        out["total"] = sum(out[c] for c in COMPONENTS)
        return out

    @property
    def total_params(self) -> int:
        return self.params()["total"]

    # ------------------------------------------------------------------ prunable units
    def unit_counts(self) -> dict[str, int]:
        """How many units each prunable axis has (per layer where the axis is per layer)."""
        return {
            "hidden": self.hidden_size,
            "ffn": self.intermediate_size if MLP in self.pattern else 0,
            "attention_heads": self.num_attention_heads if ATTENTION in self.pattern else 0,
            "kv_heads": self.num_key_value_heads if ATTENTION in self.pattern else 0,
            "mamba_heads": self.mamba_num_heads if MAMBA in self.pattern else 0,
            "mamba_head_dim": self.mamba_head_dim if MAMBA in self.pattern else 0,
            "layers": self.num_layers,
        }


def read_config(path: str | Path) -> dict:
    """Read config.json from a model directory or a path to the file itself."""
    from minitron.assets import resolve_model_path

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
