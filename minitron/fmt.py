"""Numbers as people read them (parameters, bytes) and JSON-safe floats: shared by the CLI and the
components that write human-readable files (model cards, tables)."""

from __future__ import annotations

import math


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_params(n: int | float | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def clean_floats(x):
    """NaN/inf are not JSON: they become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_floats(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_floats(v) for v in x]
    return x
