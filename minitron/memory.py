"""GPU memory model: weights + KV cache + Mamba state at a context length, and GPU budgets.

    weights      = parameters x bytes(dtype)   (all of them: every routed expert of a MoE model is resident,
                                               as serving engines hold them; *active* parameters are compute)
    kv_cache     = attention layers x 2 (K and V) x kv_heads x head_dim x context x batch x bytes(dtype)
                   (a sliding-window layer holds min(context, window - 1) tokens, as transformers' cache)
    mamba_state  = Mamba layers x batch x (heads x head_dim x state_size x bytes(state dtype)
                                           + conv channels x conv window x bytes(dtype))

The SSM state dtype is the config's `mamba_ssm_cache_dtype` unless overridden. The conv window is the
number of past inputs the cache holds per conv channel: transformers' cache and mamba_ssm keep
`conv_kernel` columns (vLLM keeps `conv_kernel - 1`); the default follows transformers, whose cache
this model is tested against. Activations and allocator slack are not modelled: that is what the
headroom is for.

A budget is `usable GiB x (1 - headroom) - reserve GiB` (the Nemotron Nano 2 paper: an A10G's
22.06 GiB x 0.95 - 1.3 GiB for a vision encoder = 19.66 GiB).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

from minitron.errors import InputError
from minitron.models.architecture import Architecture

GiB = 1024**3
log = logging.getLogger("minitron")

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
}  # fmt: skip

# Usable memory per GPU, GiB. The A10G figure is the one the Nemotron Nano 2 paper budgets with.
GPU_PRESETS: dict[str, float] = {
    "a10g": 22.06,
    "l4": 22.06,
    "a100-40gb": 39.39,
    "a100-80gb": 79.15,
    "h100-80gb": 79.11,
    "h200": 139.8,
}


def norm_dtype(name: str, flag: str = "--dtype") -> str:
    key = str(name).lower()
    if key not in _DTYPE_ALIASES:
        raise InputError(f"unknown dtype {name!r} (expected bf16, fp16 or fp32)", flag=flag)
    return _DTYPE_ALIASES[key]


@dataclass(frozen=True)
class MemoryEstimate:
    context_length: int
    batch_size: int
    dtype: str
    state_dtype: str
    weights_bytes: int
    kv_cache_bytes: int
    mamba_state_bytes: int
    mamba_ssm_bytes: int
    mamba_conv_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.mamba_state_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        d["total_gib"] = round(self.total_bytes / GiB, 4)
        return d


def estimate(
    arch: Architecture,
    *,
    context_length: int = 131072,
    batch_size: int = 1,
    dtype: str = "bf16",
    state_dtype: str | None = None,
    conv_window: int | None = None,
    params: int | None = None,
) -> MemoryEstimate:
    """Memory of `arch` at inference with `batch_size` sequences of `context_length` tokens."""
    if context_length < 0:
        raise InputError("must be >= 0", flag="--context-length")
    if batch_size < 1:
        raise InputError("must be >= 1", flag="--sequences")
    dtype = norm_dtype(dtype, flag="--memory-dtype")
    state_dtype = norm_dtype(state_dtype or arch.mamba_ssm_cache_dtype, flag="--state-dtype")
    b, sb = DTYPE_BYTES[dtype], DTYPE_BYTES[state_dtype]
    params = arch.total_params if params is None else params
    n_mamba = len(arch.mamba_layers())
    tokens = sum(arch.impl.kv_tokens(arch, i, context_length) for i in arch.attention_layers())
    kv = 2 * arch.num_key_value_heads * arch.head_dim * tokens * batch_size * b
    window = arch.conv_kernel if conv_window is None else conv_window
    ssm = n_mamba * batch_size * arch.mamba_num_heads * arch.mamba_head_dim * arch.ssm_state_size * sb
    conv = n_mamba * batch_size * arch.mamba_conv_dim * window * b
    return MemoryEstimate(
        context_length=context_length,
        batch_size=batch_size,
        dtype=dtype,
        state_dtype=state_dtype,
        weights_bytes=params * b,
        kv_cache_bytes=kv,
        mamba_state_bytes=ssm + conv,
        mamba_ssm_bytes=ssm,
        mamba_conv_bytes=conv,
    )


def resolve_context(arch: Architecture, context_length: int | None, flag: str = "--context-length") -> int:
    """`--context-length` as every command reads it: default the model's max_position_embeddings; a
    longer context is allowed (long-context serving is what budgets are for) but said out loud."""
    if context_length is None:
        return arch.max_position_embeddings
    if context_length < 0:
        raise InputError(f"must be >= 0, got {context_length}", flag=flag)
    if context_length > arch.max_position_embeddings:
        log.warning(f"warning: {flag} {context_length:,} exceeds the model's max_position_embeddings "
                    f"({arch.max_position_embeddings:,}); the memory figures are for a context it was not trained on")
    return context_length


def describe_memory(m: dict) -> str:
    """The label every memory figure is printed with: its context, sequences and dtypes."""
    seqs = f"{m['batch_size']} sequence{'s' if m['batch_size'] != 1 else ''}"
    return (f"{m['context_length']:,} tokens x {seqs}, weights/KV {m['dtype']}, SSM state {m['state_dtype']}")


@dataclass(frozen=True)
class Budget:
    gpu: str | None
    usable_bytes: int
    headroom: float
    reserve_bytes: int

    @property
    def budget_bytes(self) -> int:
        return int(self.usable_bytes * (1 - self.headroom)) - self.reserve_bytes

    def fits(self, est: MemoryEstimate) -> bool:
        return est.total_bytes <= self.budget_bytes

    def to_dict(self, est: MemoryEstimate | None = None) -> dict:
        d = {
            "gpu": self.gpu,
            "usable_bytes": self.usable_bytes,
            "headroom": self.headroom,
            "reserve_bytes": self.reserve_bytes,
            "budget_bytes": self.budget_bytes,
            "budget_gib": round(self.budget_bytes / GiB, 4),
        }
        if est is not None:
            d["fits"] = self.fits(est)
            d["margin_bytes"] = self.budget_bytes - est.total_bytes
        return d


def parse_size(text: str, flag: str = "--memory-budget") -> int:
    """`19.66GiB`, `20GB`, `512MiB`, `21474836480` -> bytes (GiB when no unit is given and the number is small)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([KMGT]i?B|[KMGT]|B)?\s*", str(text), re.I)
    if not m:
        raise InputError(f"cannot read {text!r} as a size (e.g. 19.66GiB, 20GB, 512MiB)", flag=flag)
    value, unit = float(m.group(1)), (m.group(2) or "").upper()
    scale = {"": GiB if value < 4096 else 1, "B": 1, "K": 1024, "M": 1024**2, "G": GiB, "T": 1024**4,
             "KIB": 1024, "MIB": 1024**2, "GIB": GiB, "TIB": 1024**4,
             "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]  # fmt: skip
    out = int(value * scale)
    if out <= 0:
        raise InputError(f"size must be positive, got {text!r}", flag=flag)
    return out


def make_budget(
    *, gpu: str | None = None, memory_budget: str | None = None, headroom: float = 0.0, reserve_gib: float = 0.0
) -> Budget | None:
    """A budget from `--gpu` (usable memory of a preset) or `--memory-budget` (a size), or None."""
    if gpu is None and memory_budget is None:
        return None
    if gpu is not None and memory_budget is not None:
        raise InputError("give either --gpu or --memory-budget, not both", flag="--memory-budget")
    if not 0.0 <= headroom < 1.0:
        raise InputError(f"must be in [0, 1), got {headroom}", flag="--headroom")
    if reserve_gib < 0:
        raise InputError(f"must be >= 0, got {reserve_gib}", flag="--reserve-gib")
    if gpu is not None:
        key = gpu.lower()
        if key not in GPU_PRESETS:
            raise InputError(f"unknown GPU {gpu!r} (known: {', '.join(GPU_PRESETS)})", flag="--gpu")
        usable = int(GPU_PRESETS[key] * GiB)
    else:
        key, usable = None, parse_size(memory_budget)
    budget = Budget(gpu=key, usable_bytes=usable, headroom=headroom, reserve_bytes=int(reserve_gib * GiB))
    if budget.budget_bytes <= 0:
        raise InputError("the budget is empty after headroom and reserve", flag="--reserve-gib")
    return budget
