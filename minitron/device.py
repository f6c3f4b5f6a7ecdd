"""Where the work runs: `--device auto|cpu|cuda[:N]` and the `--dtype auto` rule that depends on it."""

from __future__ import annotations

from minitron.dtypes import norm_dtype
from minitron.errors import InputError


def resolve_device(device: str = "auto") -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no GPU is available", flag="--device")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r} (expected auto, cpu or cuda[:N])", flag="--device")
    return device


def auto_dtype(dtype: str | None, device: str, flag: str = "--dtype") -> str:
    """`auto` (or None): bf16 on CUDA, fp32 on the CPU; anything else: its canonical compute dtype."""
    if dtype in (None, "auto"):
        return "bf16" if str(device).startswith("cuda") else "fp32"
    return norm_dtype(dtype, flag, fp8=False)


def autocast(device: str, dtype: str | None):
    """A `torch.autocast` context for `dtype` on `device` (a no-op for fp32 or None)."""
    import contextlib

    if dtype in (None, "fp32", "float32"):
        return contextlib.nullcontext()
    import torch

    from minitron.dtypes import torch_dtype

    return torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype(dtype))
