"""Tensor parallelism: the widths vLLM can shard over N GPUs, and what one GPU then holds.

The rules are vLLM's own asserts (vllm 0.32, `model_executor/models/nemotron_h.py` and
`layers/mamba/mamba_mixer2.py`), one entry each; every searched or explicit shape is checked
against them (`problems`), and the memory model divides by them (`per_gpu_fraction`):

| width | rule at TP = N | why (vLLM) |
|---|---|---|
| attention (query) heads | divisible by N | QKV projection is column-parallel by head |
| KV heads | divisible by N, or N divisible by them (then replicated) | `total_num_kv_heads >= tp_size` / `tp_size % total_num_kv_heads == 0` |
| Mamba heads | divisible by N | `num_heads % tp_size == 0` (mixer2) |
| Mamba groups | divisible by N, or exactly 1 (then replicated) | `n_groups % tp_size == 0 or n_groups == 1` |
| FFN neurons | divisible by N | up/down projections are column/row-parallel |
| MoE expert FFN | divisible by N | each expert's projections are split the same way |

The hidden size is not split by vLLM's tensor parallelism (RMSNorms and the residual stream are
replicated; the vocabulary is padded), so it has no rule. The Mamba groups are not a prunable
width: a TP size they refuse can be met by no shape (`impossible`).
"""

from __future__ import annotations

from minitron.errors import InputError
from minitron.models.architecture import Architecture


def check_size(tp: int) -> int:
    if tp < 1:
        raise InputError(f"must be >= 1, got {tp}", flag="--tensor-parallel")
    return tp


def impossible(arch: Architecture, tp: int) -> str | None:
    """Why no width of `arch` can be sharded over `tp` GPUs (a fixed part refuses it), or None."""
    if tp > 1 and arch.mamba_layers() and arch.n_groups % tp and arch.n_groups != 1:
        return f"the model's {arch.n_groups} Mamba groups are neither divisible by {tp} nor 1 (groups are not prunable)"
    return None


def problems(arch: Architecture, tp: int) -> list[tuple[str, str]]:
    """(flag, rule broken) for every width of `arch` that vLLM cannot shard over `tp` GPUs."""
    if tp == 1:
        return []
    out = []
    why = impossible(arch, tp)
    if why:
        out.append(("--tensor-parallel", why))
    if arch.attention_layers():
        if arch.num_attention_heads % tp:
            out.append(("--attention-heads", f"{arch.num_attention_heads} query heads are not divisible by TP {tp}"))
        kv = arch.num_key_value_heads
        if kv % tp and tp % kv:
            out.append(("--kv-heads", f"{kv} KV heads: neither divisible by TP {tp} nor a divisor of it"))
    if arch.mamba_layers() and arch.mamba_num_heads % tp:
        out.append(("--mamba-heads", f"{arch.mamba_num_heads} Mamba heads are not divisible by TP {tp}"))
    if arch.ffn_layers() and arch.intermediate_size % tp:
        out.append(("--ffn-size", f"{arch.intermediate_size} FFN neurons are not divisible by TP {tp}"))
    if arch.layers_with("moe") and arch.moe_intermediate_size % tp:
        out.append(("--tensor-parallel", f"expert FFN {arch.moe_intermediate_size} is not divisible by TP {tp}"))
    return out


def kv_heads_per_gpu(arch: Architecture, tp: int) -> int:
    """KV heads one GPU holds: kv / tp, or 1 when the heads are replicated (tp > kv)."""
    return max(1, arch.num_key_value_heads // tp)


def extra_groups(arch: Architecture, tp: int) -> int:
    """Groups vLLM adds so that every GPU's heads have theirs (a single group replicated on each)."""
    return 0 if arch.n_groups % tp == 0 else tp - arch.n_groups
