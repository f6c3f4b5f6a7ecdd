"""The one dtype table: every spelling minitron accepts, its bytes, its torch dtype, its safetensors code.

Canonical names are `fp8`, `bf16`, `fp16`, `fp32` (and `fp64`, `int64`, `int32` for what score and
checkpoint files hold). `auto` is resolved against the device by `minitron.device.auto_dtype`.
"""

from __future__ import annotations

from minitron.errors import InputError

#               bytes  torch attribute    safetensors code
_TABLE = {
    "fp8": (1, "float8_e4m3fn", "F8_E4M3"),
    "bf16": (2, "bfloat16", "BF16"),
    "fp16": (2, "float16", "F16"),
    "fp32": (4, "float32", "F32"),
    "fp64": (8, "float64", "F64"),
    "int64": (8, "int64", "I64"),
    "int32": (4, "int32", "I32"),
    "int16": (2, "int16", "I16"),
    "int8": (1, "int8", "I8"),
    "uint8": (1, "uint8", "U8"),
    "bool": (1, "bool", "BOOL"),
    "fp8_e5m2": (1, "float8_e5m2", "F8_E5M2"),
}  # fmt: skip
COMPUTE = ("fp8", "bf16", "fp16", "fp32")  # what a user may ask for (fp8: memory budgets only)
DTYPE_BYTES: dict[str, int] = {k: _TABLE[k][0] for k in COMPUTE}
_ALIASES = {
    "fp8": "fp8", "float8": "fp8", "fp8_e4m3": "fp8", "float8_e4m3fn": "fp8",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
}  # fmt: skip
_BY_CODE = {code: name for name, (_, _, code) in _TABLE.items()}
CODE_BYTES: dict[str, int] = {code: nbytes for nbytes, _, code in _TABLE.values()}  # safetensors code -> bytes


def norm_dtype(name: str, flag: str = "--dtype", *, fp8: bool = True) -> str:
    """Any accepted spelling (`bfloat16`, `torch.float16`, `half`, ...) -> its canonical name."""
    key = str(name).lower().removeprefix("torch.")
    if key not in _ALIASES or (not fp8 and _ALIASES[key] == "fp8"):
        choices = "fp8, bf16, fp16 or fp32" if fp8 else "bf16, fp16 or fp32"
        raise InputError(f"unknown dtype {name!r} (expected {choices})", flag=flag)
    return _ALIASES[key]


def torch_dtype(name: str | None, flag: str = "--dtype"):
    """A dtype name (any spelling) -> the torch dtype; None -> None. fp8 is not a compute dtype."""
    import torch

    if name is None:
        return None
    return getattr(torch, _TABLE[norm_dtype(name, flag, fp8=False)][1])


def dtype_name(dtype) -> str:
    """A torch dtype -> its canonical name (`torch.bfloat16` -> `bf16`)."""
    key = str(dtype).removeprefix("torch.")
    for name, (_, attr, _) in _TABLE.items():
        if attr == key:
            return name
    raise ValueError(f"no canonical name for {dtype}")


def safetensors_code(dtype) -> str:
    """A torch dtype -> the `dtype` string of a safetensors header (`BF16`)."""
    return _TABLE[dtype_name(dtype)][2]


def compute_dtype_of_code(code: str | None) -> str:
    """The compute dtype a tensor stored as `code` loads in: bf16 and fp16 as stored, anything else fp32."""
    name = _BY_CODE.get(code or "", "fp32")
    return name if name in ("bf16", "fp16") else "fp32"


def torch_dtype_of_code(code: str):
    """A safetensors header dtype (`BF16`) -> the torch dtype."""
    import torch

    return getattr(torch, _TABLE[_BY_CODE[code]][1])
