"""`describe()`: the facts `minitron inspect` shows, as one plain dict (the `--json` document)."""

from __future__ import annotations

from pathlib import Path

from minitron.memory import Budget, estimate, resolve_context
from minitron.models.checkpoint import open_checkpoint
from minitron.models.layer_types import ATTENTION, LAYER_TYPE_NAMES, MAMBA, MLP, MOE


def describe(
    path: str | Path,
    *,
    context_length: int | None = None,
    batch_size: int = 1,
    dtype: str = "bf16",
    state_dtype: str | None = None,
    budget: Budget | None = None,
    engine: str = "vllm",
    kv_dtype: str | None = None,
    prefill_chunk: int | None = None,
    tensor_parallel: int = 1,
) -> dict:
    ckpt = open_checkpoint(path)  # strict header check when weights are present
    a = ckpt.arch
    context_length = resolve_context(a, context_length)
    est = estimate(a, context_length=context_length, batch_size=batch_size, dtype=dtype, state_dtype=state_dtype,
                   engine=engine, kv_dtype=kv_dtype, prefill_chunk=prefill_chunk, tensor_parallel=tensor_parallel)
    doc = {
        "path": str(ckpt.path),
        "model_type": a.raw.get("model_type"),
        "family": a.family,
        "pattern": a.pattern,
        "num_layers": a.num_layers,
        "layers": {LAYER_TYPE_NAMES[c]: a.count(c) for c in (MAMBA, MLP, ATTENTION, MOE)},
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "num_attention_heads": a.num_attention_heads,
        "num_key_value_heads": a.num_key_value_heads,
        "head_dim": a.head_dim,
        "mamba_num_heads": a.mamba_num_heads,
        "mamba_head_dim": a.mamba_head_dim,
        "n_groups": a.n_groups,
        "ssm_state_size": a.ssm_state_size,
        "conv_kernel": a.conv_kernel,
        "vocab_size": a.vocab_size,
        "tie_word_embeddings": a.tie_word_embeddings,
        "max_position_embeddings": a.max_position_embeddings,
        "mamba_ssm_cache_dtype": a.mamba_ssm_cache_dtype,
        "n_routed_experts": a.n_routed_experts,
        "moe_intermediate_size": a.moe_intermediate_size,
        "moe_shared_expert_intermediate_size": a.moe_shared_expert_intermediate_size,
        "num_experts_per_tok": a.num_experts_per_tok,
        "params": a.params(),
        # Per token: everything but the routed experts, plus num_experts_per_tok of them (= params when dense).
        "active_params": a.active_params(),
        "units": a.unit_counts(),
        "weights": {
            "present": ckpt.has_weights,
            "files": [f.name for f in ckpt.shard_files()] if ckpt.has_weights else [],
            "tensors": len(ckpt.tensors),
            "bytes": ckpt.weights_bytes,
            "dtype": ckpt.dtype,
        },
        "memory": est.to_dict(),
    }
    if tensor_parallel > 1:
        from minitron.tensor_parallel import problems

        doc["tensor_parallel"] = {"size": tensor_parallel,
                                  "problems": [{"flag": f, "rule": r} for f, r in problems(a, tensor_parallel)]}
    if budget is not None:
        doc["budget"] = budget.to_dict(est)
    return doc
