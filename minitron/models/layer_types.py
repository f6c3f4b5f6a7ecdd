"""Layer-type names. transformers has spelled Nemotron-H layer types in several ways:

- legacy configs: `hybrid_override_pattern` string, one char per layer (`M`, `-`, `*`, `E`);
- transformers 4.x: `layers_block_type` with "mamba", "mlp", "attention", "moe";
- transformers 5.x: `layers_block_type` with "linear_attention", "mlp", "full_attention", "moe".

Inside minitron a layer type is always its one-character code.
"""

from __future__ import annotations

from minitron.errors import InputError

MAMBA, MLP, ATTENTION, MOE = "M", "-", "*", "E"
LAYER_CHARS = (MAMBA, MLP, ATTENTION, MOE)
LAYER_TYPE_NAMES = {MAMBA: "mamba", MLP: "mlp", ATTENTION: "attention", MOE: "moe"}

_ALIASES = {
    "m": MAMBA, "mamba": MAMBA, "mamba2": MAMBA, "linear_attention": MAMBA,
    "-": MLP, "mlp": MLP,
    "*": ATTENTION, "attention": ATTENTION, "full_attention": ATTENTION,
    "e": MOE, "moe": MOE,
}  # fmt: skip

# What transformers 5.x writes in `layers_block_type`.
_HF_NAMES = {MAMBA: "linear_attention", MLP: "mlp", ATTENTION: "full_attention", MOE: "moe"}


def layer_char(name: str) -> str:
    """Any spelling of a layer type -> its one-character code."""
    key = name.strip().lower() if len(name) > 1 else name.lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise InputError(f"unknown Nemotron-H layer type {name!r} (expected one of M, -, *, E)")


def layer_name(char: str) -> str:
    """One-character code -> the human name (`mamba`, `mlp`, `attention`, `moe`)."""
    return LAYER_TYPE_NAMES[layer_char(char)]


def hf_layer_name(char: str) -> str:
    """One-character code -> the name transformers 5.x writes in `layers_block_type`."""
    return _HF_NAMES[layer_char(char)]


def pattern_from_config(cfg: dict) -> str:
    """The layer pattern of a config dict, whichever key and spelling it uses."""
    pattern = cfg.get("hybrid_override_pattern")
    types = cfg.get("layers_block_type") or cfg.get("layer_types")
    if types:
        if not isinstance(types, list):
            raise InputError("config.json: `layers_block_type` must be a list of layer types")
        from_types = "".join(layer_char(t) for t in types)
        if pattern and pattern != from_types:
            raise InputError(
                "config.json: `hybrid_override_pattern` and `layers_block_type` disagree "
                f"({pattern!r} vs {from_types!r})"
            )
        return from_types
    if pattern:
        if not isinstance(pattern, str):
            raise InputError("config.json: `hybrid_override_pattern` must be a string")
        return "".join(layer_char(c) for c in pattern)
    raise InputError("config.json: no layer pattern (`hybrid_override_pattern` or `layers_block_type`)")


def set_pattern(cfg: dict, pattern: str) -> dict:
    """A copy of `cfg` describing `pattern`, written in the same key(s) the config already used."""
    out = dict(cfg)
    had_types = "layers_block_type" in cfg or "layer_types" in cfg
    if "hybrid_override_pattern" in cfg or not had_types:
        out["hybrid_override_pattern"] = pattern
    if had_types:
        key = "layers_block_type" if "layers_block_type" in cfg else "layer_types"
        old = cfg[key]
        legacy = any(t in ("mamba", "attention") for t in old)
        names = {MAMBA: "mamba", ATTENTION: "attention"} if legacy else {}
        out[key] = [names.get(c, hf_layer_name(c)) for c in pattern]
    if "num_hidden_layers" in cfg or not had_types:
        out["num_hidden_layers"] = len(pattern)
    return out
