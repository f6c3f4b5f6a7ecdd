"""GPU memory model: weights + KV cache + Mamba state (+ the serving engine's terms) at a context length.

    weights      = parameters x bytes(--memory-dtype)  (fp8: 1 byte; all of them: every routed expert of a MoE
                                                     model is resident, as serving engines hold them;
                                                     *active* parameters are compute)
    kv_cache     = attention layers x 2 (K and V) x kv_heads x head_dim x context x sequences x bytes(--kv-dtype)
                   (a sliding-window layer holds min(context, window - 1) tokens, as transformers' cache)
    mamba_state  = Mamba layers x sequences x (heads x head_dim x state_size x bytes(state dtype)
                                               + conv channels x conv window x bytes(activation dtype))
    prefill      = the largest layer's transient tensors for a prefill of `prefill tokens` (see below)
    logits       = logits rows x vocab x 4 bytes (fp32, as both engines sample from)

The engine (`--engine`, default vllm: what people serve with) decides four things:

| term | vllm | hf (transformers' generate) |
|---|---|---|
| conv window | `conv_kernel - 1` columns (vLLM `mamba2_state_shape`) | `conv_kernel` columns (transformers' cache, mamba_ssm) |
| prefill tokens | `--prefill-chunk` (vLLM's chunked prefill; 2048, its server default) | the whole context (one forward) |
| logits rows | 256 (`max_num_seqs`: vLLM profiles its sampler at that many rows) | the sequences |
| usable share of a GPU | 0.92 (vLLM's `gpu_memory_utilization` default) | 1.0 |

Prefill activations, per layer type for T tokens (inference: a layer's tensors are freed before the
next; the peak is the largest layer's, plus the residual stream and its normed copy, 2 x T x hidden):
Mamba `in_proj` output (T x (2 H P + 2 G N + H)) + conv output (T x conv channels) + scan output
(T x H P) + the chunked scan's states (T / chunk_size x H x P x N, fp32); MLP up and activation
(2 x T x ffn); attention q, k, v and its output (T x (2 q + 2 kv) x head_dim, fused kernels: no T x T
scores); MoE the routed tokens' expert FFN (2 x T x top_k x expert ffn) + shared expert. The 9B's Mamba
`in_proj` output alone at 131,072 tokens in one forward (hf) is 5.9 GB; vLLM's 2048-token chunk, 93 MB.

The SSM state dtype is the config's `mamba_ssm_cache_dtype` unless overridden (both engines follow
it). Allocator slack and paging granularity are not modelled: that is what the headroom is for.

A budget is `usable GiB x (1 - headroom) - reserve GiB`. With `--gpu` the defaults are the engine's:
headroom = 1 - its usable share (vllm 0.08, hf 0) and reserve = the CUDA context (1.0 GiB: context,
cuBLAS / NCCL workspaces and CUDA graphs, an estimate; measure yours); a `--memory-budget` size is the
budget itself (headroom and reserve 0) unless given. The Nemotron Nano 2 paper's figure is explicit:
an A10G's 22.06 GiB x 0.95 - 1.3 GiB for a vision encoder = 19.66 GiB (`--headroom 0.05 --reserve-gib 1.3`).

Deployment fit: `max_sequences` = (budget - weights - prefill - fixed logits) // (KV + Mamba state
(+ logits row) per sequence), the concurrent sequences of `context` tokens that fit.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

from minitron.dtypes import DTYPE_BYTES, norm_dtype  # noqa: F401  (re-exported: memory's dtypes)
from minitron.errors import InputError
from minitron.models.architecture import Architecture

GiB = 1024**3
log = logging.getLogger("minitron")

# Usable memory per GPU, GiB. The A10G figure is the one the Nemotron Nano 2 paper budgets with.
GPU_PRESETS: dict[str, float] = {
    "a10g": 22.06,
    "l4": 22.06,
    "a100-40gb": 39.39,
    "a100-80gb": 79.15,
    "h100-80gb": 79.11,
    "h200": 139.8,
}

ENGINES = ("vllm", "hf")
VLLM_GPU_MEMORY_UTILIZATION = 0.92  # vllm.config.cache.CacheConfig default (vLLM 0.32; 0.9 before)
VLLM_MAX_NUM_SEQS = 256  # vLLM's default on GPUs below 70 GiB; its sampler is profiled at this many rows
DEFAULT_PREFILL_CHUNK = 2048  # vLLM's max_num_batched_tokens for its OpenAI server on most GPUs
CUDA_CONTEXT_GIB = 1.0  # CUDA context + cuBLAS/NCCL workspaces + CUDA graphs: an estimate, not measured here


def norm_engine(name: str | None) -> str | None:
    """`vllm` or `hf`; `none` (None) is the model alone: the paper's weights + KV + state with
    transformers' conv window and no engine terms (the demo's budget is a fraction of that)."""
    if name is None or str(name).lower() == "none":
        return None
    key = str(name).lower()
    if key not in ENGINES:
        raise InputError(f"unknown engine {name!r} (expected vllm, hf or none)", flag="--engine")
    return key


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
    engine: str | None = "hf"
    kv_dtype: str = "bf16"
    conv_window: int = 0
    prefill_tokens: int = 0
    prefill_activation_bytes: int = 0
    logits_rows: int = 0
    logits_bytes: int = 0
    tensor_parallel: int = 1  # every figure is one GPU's of that many

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.kv_cache_bytes + self.mamba_state_bytes + self.prefill_activation_bytes
                + self.logits_bytes)

    @property
    def per_sequence_bytes(self) -> int:
        """What one more sequence of `context_length` tokens adds: its KV, its state (and, hf, its logits row)."""
        per = self.kv_cache_bytes + self.mamba_state_bytes
        if self.engine == "hf":  # generate prefills every sequence at once and keeps a logits row each
            per += self.prefill_activation_bytes + self.logits_bytes
        return per // self.batch_size

    @property
    def fixed_bytes(self) -> int:
        """What does not grow with the sequences: weights (vllm: and the prefill chunk, the logits buffer)."""
        return self.total_bytes - self.per_sequence_bytes * self.batch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        d["total_gib"] = round(self.total_bytes / GiB, 4)
        d["per_sequence_bytes"] = self.per_sequence_bytes
        d["fixed_bytes"] = self.fixed_bytes
        return d


def prefill_activation_bytes(arch: Architecture, tokens: int, act_bytes: int, tp: int = 1,
                             intermediate_size: int | None = None) -> int:
    """Peak transient bytes of one inference forward over `tokens` tokens (the module docstring's terms);
    with tensor parallelism the layers' tensors are split `tp` ways, the residual stream is not.
    `intermediate_size`: the same for that FFN width (the search prices every width of one shape)."""
    if tokens <= 0:
        return 0
    residual, per_layer = prefill_activation_terms(arch, tokens, act_bytes)
    if "ffn" in per_layer and intermediate_size is not None:
        per_layer["ffn"] = 2 * tokens * intermediate_size * act_bytes
    return residual + -(-max(per_layer.values(), default=0) // tp)


def prefill_activation_terms(arch: Architecture, tokens: int, act_bytes: int) -> tuple[int, dict[str, int]]:
    """The residual stream's bytes and each layer kind's transient bytes over `tokens` tokens (unsplit)."""
    t, h = tokens, arch.hidden_size
    per_layer = {}
    if arch.mamba_layers():
        hp, n = arch.mamba_intermediate, arch.ssm_state_size
        chunk = max(1, int(arch.raw.get("chunk_size") or 256))
        states = -(-t // chunk) * arch.mamba_num_heads * arch.mamba_head_dim * n * 4  # fp32 chunk states
        per_layer["mamba"] = t * (arch.mamba_in_proj_dim + arch.mamba_conv_dim + hp) * act_bytes + states
    if arch.ffn_layers():
        per_layer["ffn"] = 2 * t * arch.intermediate_size * act_bytes
    if arch.attention_layers():
        per_layer["attention"] = t * (2 * arch.num_attention_heads + 2 * arch.num_key_value_heads) * arch.head_dim * act_bytes
    if arch.layers_with("moe"):
        top_k = int(arch.raw.get("num_experts_per_tok") or 1)
        shared = arch.moe_shared_expert_intermediate_size * max(arch.n_shared_experts, 0)
        per_layer["moe"] = 2 * t * (top_k * arch.moe_intermediate_size + shared) * act_bytes
    return 2 * t * h * act_bytes, per_layer


def estimate(
    arch: Architecture,
    *,
    context_length: int = 131072,
    batch_size: int = 1,
    dtype: str = "bf16",
    state_dtype: str | None = None,
    conv_window: int | None = None,
    params: int | None = None,
    engine: str | None = "vllm",
    kv_dtype: str | None = None,
    prefill_chunk: int | None = None,
    tensor_parallel: int = 1,
) -> MemoryEstimate:
    """Memory of `arch` served by `engine` with `batch_size` sequences of `context_length` tokens, on one
    GPU of `tensor_parallel` (weights and layer tensors split as vLLM shards them, `minitron.tensor_parallel`).

    `dtype` is the weights' (fp8 allowed); activations and the conv state are bf16 under fp8 weights,
    else `dtype`; `kv_dtype` defaults to that activation dtype (vLLM's `--kv-cache-dtype auto`)."""
    if context_length < 0:
        raise InputError("must be >= 0", flag="--context-length")
    if batch_size < 1:
        raise InputError("must be >= 1", flag="--sequences")
    engine = norm_engine(engine)
    dtype = norm_dtype(dtype, flag="--memory-dtype")
    act = "bf16" if dtype == "fp8" else dtype
    kv_dtype = norm_dtype(kv_dtype or act, flag="--kv-dtype")
    if kv_dtype == "fp32" and kv_dtype != act:
        raise InputError("expected fp8 or bf16 (or the activation dtype)", flag="--kv-dtype")
    state_dtype = norm_dtype(state_dtype or arch.mamba_ssm_cache_dtype, flag="--state-dtype", fp8=False)
    if prefill_chunk is not None and prefill_chunk < 1:
        raise InputError(f"must be >= 1, got {prefill_chunk}", flag="--prefill-chunk")
    from minitron import tensor_parallel as tpar

    tp = tpar.check_size(tensor_parallel)
    b, ab, kb, sb = DTYPE_BYTES[dtype], DTYPE_BYTES[act], DTYPE_BYTES[kv_dtype], DTYPE_BYTES[state_dtype]
    params = arch.total_params if params is None else params
    n_mamba = len(arch.mamba_layers())
    tokens = sum(arch.impl.kv_tokens(arch, i, context_length) for i in arch.attention_layers())
    kv = 2 * tpar.kv_heads_per_gpu(arch, tp) * arch.head_dim * tokens * batch_size * kb
    if conv_window is None:
        conv_window = arch.conv_kernel - 1 if engine == "vllm" else arch.conv_kernel
    ssm = n_mamba * batch_size * (arch.mamba_num_heads // tp) * arch.mamba_head_dim * arch.ssm_state_size * sb
    conv_dim = arch.mamba_intermediate + 2 * (arch.n_groups + tpar.extra_groups(arch, tp)) * arch.ssm_state_size
    conv = n_mamba * batch_size * (conv_dim // tp) * conv_window * ab
    if engine == "vllm":
        prefill = min(context_length, prefill_chunk or DEFAULT_PREFILL_CHUNK)
        rows = max(VLLM_MAX_NUM_SEQS, batch_size)
    elif engine == "hf":  # transformers' generate: the whole prompt of every sequence in one forward
        prefill, rows = context_length * batch_size, batch_size
    else:  # the model alone
        prefill, rows = 0, 0
    return MemoryEstimate(
        context_length=context_length,
        batch_size=batch_size,
        dtype=dtype,
        state_dtype=state_dtype,
        weights_bytes=-(-params * b // tp),  # replicated norms (< 0.1 %) counted as split
        kv_cache_bytes=kv,
        mamba_state_bytes=ssm + conv,
        mamba_ssm_bytes=ssm,
        mamba_conv_bytes=conv,
        engine=engine,
        kv_dtype=kv_dtype,
        conv_window=conv_window,
        prefill_tokens=prefill,
        prefill_activation_bytes=prefill_activation_bytes(arch, prefill, ab, tp),
        logits_rows=rows,
        logits_bytes=rows * arch.vocab_size * 4,  # gathered: the full vocabulary on a GPU
        tensor_parallel=tp,
    )


def max_sequences(est: MemoryEstimate, budget_bytes: int) -> int:
    """The most concurrent sequences of `est.context_length` tokens that fit `budget_bytes` (0: not even one)."""
    free = budget_bytes - est.fixed_bytes
    return max(0, free // est.per_sequence_bytes) if est.per_sequence_bytes else 0


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
    kv = m.get("kv_dtype", m["dtype"])
    dtypes = f"weights/KV {kv}" if kv == m["dtype"] else f"weights {m['dtype']}, KV {kv}"
    engine = f", engine {m['engine']}" if m.get("engine") else ""
    tp = f", per GPU of {m['tensor_parallel']} (tensor parallel)" if m.get("tensor_parallel", 1) > 1 else ""
    return f"{m['context_length']:,} tokens x {seqs}, {dtypes}, SSM state {m['state_dtype']}{engine}{tp}"


@dataclass(frozen=True)
class Serving:
    """How a model is served, for its memory figures: context, sequences held at once, dtypes, engine, GPUs."""

    context_length: int = 131072
    batch_size: int = 1
    dtype: str = "bf16"
    state_dtype: str | None = None
    engine: str | None = "vllm"
    kv_dtype: str | None = None
    prefill_chunk: int | None = None
    tensor_parallel: int = 1

    def estimate(self, arch: Architecture, **overrides) -> MemoryEstimate:
        return estimate(arch, **{**asdict(self), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    gpu: str | None
    usable_bytes: int
    headroom: float
    reserve_bytes: int
    engine: str | None = None  # whose defaults filled headroom and reserve (None: given, or a size)

    @property
    def budget_bytes(self) -> int:
        return int(self.usable_bytes * (1 - self.headroom)) - self.reserve_bytes

    def fits(self, est: MemoryEstimate) -> bool:
        return est.total_bytes <= self.budget_bytes

    def to_dict(self, est: MemoryEstimate | None = None) -> dict:
        d = {
            "gpu": self.gpu,
            "engine": self.engine,
            "usable_bytes": self.usable_bytes,
            "headroom": self.headroom,
            "reserve_bytes": self.reserve_bytes,
            "budget_bytes": self.budget_bytes,
            "budget_gib": round(self.budget_bytes / GiB, 4),
        }
        if est is not None:
            d["fits"] = self.fits(est)
            d["margin_bytes"] = self.budget_bytes - est.total_bytes
            d["max_sequences"] = max_sequences(est, self.budget_bytes)
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
    *, gpu: str | None = None, memory_budget: str | None = None, headroom: float | None = None,
    reserve_gib: float | None = None, engine: str = "vllm",
) -> Budget | None:
    """A budget from `--gpu` (usable memory of a preset) or `--memory-budget` (a size), or None.

    Unset headroom / reserve: with `--gpu` the engine's usable share and the CUDA-context reserve;
    with a size, 0 (the size is the budget)."""
    engine = norm_engine(engine)
    if gpu is None and memory_budget is None:
        return None
    if gpu is not None and memory_budget is not None:
        raise InputError("give either --gpu or --memory-budget, not both", flag="--memory-budget")
    defaults = gpu is not None and (headroom is None or reserve_gib is None)
    if headroom is None:
        headroom = round(1 - VLLM_GPU_MEMORY_UTILIZATION, 4) if gpu is not None and engine == "vllm" else 0.0
    if reserve_gib is None:
        reserve_gib = CUDA_CONTEXT_GIB if gpu is not None else 0.0
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
    budget = Budget(gpu=key, usable_bytes=usable, headroom=headroom, reserve_bytes=int(reserve_gib * GiB),
                    engine=engine if defaults else None)
    if budget.budget_bytes <= 0:
        raise InputError("the budget is empty after headroom and reserve", flag="--reserve-gib")
    return budget
