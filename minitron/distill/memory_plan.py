"""What a distillation run needs per device, from the configs alone (nothing loaded).

Terms, in bytes per device (N devices; FSDP2 shards the first four by N, DDP replicates them):

    teacher weights    teacher parameters x bytes(compute dtype)         (0 with cached teacher logits)
    student weights    student parameters x 4                            (fp32 master weights)
    gradients          student parameters x 4                            (+ one DDP bucket copy when N > 1)
    optimizer          student parameters x 8                            (AdamW: exp_avg, exp_avg_sq, fp32)
    fsdp gathered      the units FSDP2 holds unsharded at once (only with N > 1), the larger of two phases:
                       student step: its root unit (embedding, final norm, lm_head: gathered from the
                       forward to the end of the backward) and the root's unsharded gradients, plus 2 blocks
                       (the one computed + prefetch) and one block's unsharded gradients, all fp32;
                       teacher forward: its root (resharded after each forward, `fsdp_wrap(frozen=True)`)
                       + 2 blocks, in the compute dtype
    activations        what autograd saves in the student's forward at micro-batch x seq-len
    logits             student logits [b, L, V] fp32 + the teacher's [b, L, V] (compute dtype; they become
                       the loss gradient) or, cached, the gradient buffer [b, L, V] fp32 + the bins read
                       + the loss's chunk temporaries (3 x chunk x V fp32)
    intermediate       with `--intermediate-weight`: the teacher's stream after each of its J kept layers
                       [b, L, h_t] (compute dtype, captured for the loss) + the J differences the loss saves
                       for its backward [b, L, h_s] fp32
    runtime            the process itself: Python, torch, transformers (CPU) or the CUDA context (GPU)

Activations per token and layer are the element counts autograd saves in transformers' NemotronH
(counted with `torch.autograd.graph.saved_tensors_hooks` on its reference, non-CUDA-kernel path,
fp32; the fit is exact to < 0.1 % over 11 Mamba shapes):

    Mamba-2    3 h + 13 I + 6 G N + 5 H N + 3 H c + 2 I N / c     (I = H P heads x head dim, c = chunk)
    MLP        3 h + 2 F + 1
    attention  2 h + 1 + 3 q + 2 kv + heads                        (q = heads x head dim, kv = kv heads x head dim)
    MoE        3 h + 1 + top-k x 2 F_expert + 2 F_shared + experts  (not counted; from the MLP's form)
    + final norm 3 h + 1

With gradient checkpointing each block keeps only its input (h per token) and one block's
activations are alive again during its backward. On CUDA the Mamba layers run mamba-ssm's fused
`mamba_split_conv1d_scan_combined` (the project's `cuda` extra installs it), which saves only
`zxbcdt`, `out_x` and the gated norm's rstd and recomputes the rest in the backward:

    Mamba-2 (CUDA kernels)  3 h + 1 + in_proj_dim + I + G          (read from mamba-ssm; not measured here)

bf16 autocast halves the activation bytes (an approximation: norms and softmax statistics stay fp32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from minitron.models.layer_types import ATTENTION, MAMBA, MLP, MOE

GiB = 1024**3
CPU_RUNTIME = 560 * 2**20  # Python + torch + transformers + tokenizer, measured (`benchmarks/bench_memory_plan.py`)
CUDA_RUNTIME = 1 * GiB  # CUDA context, cuBLAS workspace, allocator slack (not measured in this project)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def activation_elements_per_token(arch, char: str, *, mamba_kernels: bool = False) -> float:
    """Elements autograd saves per token in one block of type `char` (see the module docstring)."""
    h = arch.hidden_size
    if char == MAMBA and mamba_kernels:  # mamba-ssm's fused split-conv1d-scan: zxbcdt, out_x, rstd (+ the pre-norm)
        return 3 * h + 1 + arch.mamba_in_proj_dim + arch.mamba_intermediate + arch.n_groups
    if char == MAMBA:
        heads, p, n, g = arch.mamba_num_heads, arch.mamba_head_dim, arch.ssm_state_size, arch.n_groups
        c = int(arch.raw.get("chunk_size", 128) or 128)
        i = heads * p
        return 3 * h + 13 * i + 6 * g * n + 5 * heads * n + 3 * heads * c + 2 * i * n / c
    if char == MLP:
        return 3 * h + 2 * arch.intermediate_size + 1
    if char == ATTENTION:
        q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
        return 2 * h + 1 + 3 * q + 2 * kv + arch.num_attention_heads
    if char == MOE:
        top = int(arch.raw.get("num_experts_per_tok", 1) or 1)
        return (3 * h + 1 + top * 2 * arch.moe_intermediate_size + 2 * arch.moe_shared_expert_intermediate_size
                + arch.n_routed_experts)  # fmt: skip
    raise ValueError(char)


@dataclass(frozen=True)
class PlanInput:
    teacher: object  # Architecture
    student: object
    seq_len: int
    micro_batch_size: int
    devices: int = 1
    fsdp: bool = False
    cached_teacher: bool = False
    gradient_checkpointing: bool = False
    compute_dtype: str = "fp32"  # fp32 on CPU, bf16 on GPU
    device: str = "cpu"
    chunk_tokens: int = 32
    top_k: int = 64  # cached teacher logits: bins per token
    intermediate: bool = False  # --intermediate-weight > 0: the captured states of the J student layers


def plan(x: PlanInput) -> dict:
    """Bytes per device of each term, and the total (see the module docstring)."""
    t, s = x.teacher, x.student
    n = x.devices
    shard = n if (x.fsdp and n > 1) else 1
    cb = DTYPE_BYTES[x.compute_dtype]
    ps, pt = s.total_params, t.total_params
    tokens = x.micro_batch_size * x.seq_len
    kernels = x.device != "cpu"
    per_layer = [activation_elements_per_token(s, c, mamba_kernels=kernels) for c in s.pattern]
    act_bytes = 4 if x.compute_dtype == "fp32" else 2
    full_act = (sum(per_layer) + 3 * s.hidden_size + 1) * tokens * act_bytes
    ckpt_act = (s.num_layers * s.hidden_size + max(per_layer) + 3 * s.hidden_size + 1) * tokens * act_bytes
    v = s.vocab_size
    chunk = 3 * min(x.chunk_tokens, tokens) * v * 4
    if x.cached_teacher:
        logits = tokens * v * 4 * 2 + tokens * (x.top_k * 8 + (x.top_k + 1) * 4) + chunk
    else:
        logits = tokens * v * 4 + tokens * v * cb + chunk
    s_block, t_block = max(s.layer_params(c) for c in s.pattern), max(t.layer_params(c) for c in t.pattern)
    s_root = ps - sum(s.layer_params(c) for c in s.pattern)  # embedding, final norm, lm_head (tied: once)
    t_root = pt - sum(t.layer_params(c) for c in t.pattern)
    student_phase = (2 * s_root + 3 * s_block) * 4
    teacher_phase = 0 if x.cached_teacher else (t_root + 2 * t_block) * cb
    terms = {
        "teacher_weights": 0 if x.cached_teacher else math.ceil(pt * cb / shard),
        "student_weights": math.ceil(ps * 4 / shard),
        "gradients": math.ceil(ps * 4 / shard) * (2 if (n > 1 and not x.fsdp) else 1),
        "optimizer": math.ceil(ps * 8 / shard),
        "fsdp_gathered": max(student_phase, teacher_phase) if shard > 1 else 0,
        "activations": int(ckpt_act if x.gradient_checkpointing else full_act),
        "logits": int(logits),
        "intermediate": s.num_layers * tokens * (t.hidden_size * cb + s.hidden_size * 4) if x.intermediate else 0,
        "runtime": CPU_RUNTIME if x.device == "cpu" else CUDA_RUNTIME,
    }
    return {
        "devices": n, "fsdp": bool(x.fsdp and n > 1), "cached_teacher": x.cached_teacher,
        "gradient_checkpointing": x.gradient_checkpointing, "intermediate": x.intermediate,
        "micro_batch_size": x.micro_batch_size,
        "seq_len": x.seq_len, "compute_dtype": x.compute_dtype, "terms": terms, "total": sum(terms.values()),
        "activations_without_checkpointing": int(full_act), "activations_with_checkpointing": int(ckpt_act),
        "teacher_params": pt, "student_params": ps, "mamba_path": "kernels" if kernels else "reference",
    }  # fmt: skip


def cheapest_fit(x: PlanInput, budget: int, *, max_devices: int = 1024) -> tuple[str, dict] | None:
    """The first change (cheapest first) whose plan fits `budget` bytes per device, or None.

    Order: a smaller micro-batch (more accumulation: the same global batch, a little slower), then
    gradient checkpointing (about a third more compute), then cached teacher logits (one teacher pass
    and disk), then more devices with FSDP2 (more hardware); later steps keep the earlier changes. With
    the intermediate-state loss cached logits are not offered: it needs the teacher model.
    """
    ckpt, cache = "--gradient-checkpointing", "--teacher-logits DIR (from `minitron teacher-logits`)"
    singles: list[tuple[str, PlanInput]] = []
    mb = x.micro_batch_size
    while mb > 1:
        mb //= 2
        singles.append((f"--micro-batch-size {mb}", replace(x, micro_batch_size=mb)))
    if not x.gradient_checkpointing:
        singles.append((ckpt, replace(x, gradient_checkpointing=True)))
        if x.micro_batch_size > 1:
            singles.append((f"--micro-batch-size 1 + {ckpt}", replace(x, gradient_checkpointing=True, micro_batch_size=1)))
    if not x.cached_teacher and not x.intermediate:
        singles.append((cache, replace(x, cached_teacher=True)))
        both = replace(x, cached_teacher=True, gradient_checkpointing=True, micro_batch_size=1)
        singles.append((f"--micro-batch-size 1 + {ckpt} + {cache}", both))
    candidates = list(singles)
    n = x.devices * 2 if x.fsdp else 2
    while n <= max_devices:
        more = f"{n} devices with --fsdp (torchrun --nproc-per-node {n})"
        candidates.append((more, replace(x, devices=n, fsdp=True)))
        candidates += [(f"{what} + {more}", replace(p, devices=n, fsdp=True)) for what, p in singles]
        n *= 2
    for what, p in candidates:
        doc = plan(p)
        if doc["total"] <= budget:
            return what, doc
    return None
