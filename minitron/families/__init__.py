"""Model families: one module per family, one registry keyed by the config's `model_type`.

    nemotron_h  Nemotron-H, Nemotron Nano 2, Nemotron 3 Nano      (families/nemotron_h.py)
    llama       Llama 2/3, Minitron-4B                              (families/dense.py)
    mistral     Mistral, Mistral-NeMo, Mistral-NeMo-Minitron        (families/dense.py)
    qwen2       Qwen2 / Qwen2.5 (q/k/v biases)                      (families/dense.py)
    qwen3       Qwen3 (RMSNorm of q and k per head)                 (families/dense.py)
    bamba       Bamba (Mamba-2 or attention, plus an MLP per layer)  (families/mamba_hybrid.py)
    granitemoehybrid  Granite 4.0-H (routed experts follow hidden)  (families/mamba_hybrid.py)
    falcon_h1   Falcon-H1 (attention ∥ Mamba-2, then an MLP)        (families/falcon_h1.py)
    zamba2      Zamba2 (Mamba-2 + a shared attention block; depth)  (families/zamba2.py)

Adding a family: a module with a `Family` subclass (or one more `DenseVariant` for a dense
transformer that differs from Llama only in biases, norms or defaults), listed in `_FAMILIES`.
"""

from __future__ import annotations

from minitron.errors import InputError
from minitron.families.base import Family, HookPoint, ModuleNames, submodule
from minitron.families.dense import DENSE_VARIANTS, DenseFamily
from minitron.families.falcon_h1 import FalconH1
from minitron.families.mamba_hybrid import VARIANTS as HYBRID_VARIANTS
from minitron.families.mamba_hybrid import MambaHybridFamily
from minitron.families.nemotron_h import NemotronH
from minitron.families.zamba2 import Zamba2

_FAMILIES: dict[str, Family] = {
    "nemotron_h": NemotronH(),
    **{v.model_type: DenseFamily(v) for v in DENSE_VARIANTS},
    **{v.model_type: MambaHybridFamily(v) for v in HYBRID_VARIANTS},
    "falcon_h1": FalconH1(),
    "zamba2": Zamba2(),
}

__all__ = ["Family", "HookPoint", "ModuleNames", "family_for_config", "get_family", "submodule",
           "supported_model_types"]


def supported_model_types() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise InputError(f"unsupported model_type {name!r}: minitron supports {', '.join(supported_model_types())}")
    return _FAMILIES[name]


def family_for_config(cfg: dict) -> Family:
    """The family of a config dict (its `model_type`); an unsupported one names the supported ones."""
    return get_family(cfg.get("model_type"))
