"""Run by the vLLM environment's Python (tests/test_vllm.py): vLLM's own per-sequence cache bytes of a
Nemotron-H config, without loading weights.

    python vllm_state_probe.py DTYPE CONFIG.json [CONFIG.json ...]
      -> one JSON list, per config {"mamba_state_bytes_per_layer", "kv_bytes_per_token_per_layer",
                                    "conv_shape", "ssm_shape", "dtypes"}

The Mamba state comes from vLLM's `NemotronHForCausalLM.get_mamba_state_shape_from_config` /
`get_mamba_state_dtype_from_config` (what its engine allocates per sequence), the attention bytes from
its `FullAttentionSpec.page_size_bytes`, both fed a minimal stand-in for the `VllmConfig` they read.
"""

import json
import sys
from types import SimpleNamespace


def main() -> None:
    import torch

    dtype = getattr(torch, sys.argv[1])
    out = []
    for path in sys.argv[2:]:
        out.append(probe(json.load(open(path)), dtype))
    print(json.dumps(out))


def probe(cfg: dict, dtype) -> dict:
    import torch
    from vllm.model_executor.models.nemotron_h import NemotronHForCausalLM
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    ssm_dtype = cfg.get("mamba_ssm_cache_dtype", "auto")
    vcfg = SimpleNamespace(
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
        cache_config=SimpleNamespace(use_replayssm=False, mamba_cache_dtype="auto", mamba_ssm_cache_dtype=ssm_dtype),
        model_config=SimpleNamespace(hf_config=SimpleNamespace(**cfg), dtype=dtype),
        num_speculative_tokens=0,
    )
    shapes = NemotronHForCausalLM.get_mamba_state_shape_from_config(vcfg)
    dtypes = NemotronHForCausalLM.get_mamba_state_dtype_from_config(vcfg)
    state = sum(torch.Size(s).numel() * d.itemsize for s, d in zip(shapes, dtypes, strict=True))
    block = 16
    attn = FullAttentionSpec(block_size=block, num_kv_heads=cfg["num_key_value_heads"], head_size=cfg["head_dim"],
                             dtype=dtype)
    return {"mamba_state_bytes_per_layer": state, "kv_bytes_per_token_per_layer": attn.page_size_bytes // block,
            "conv_shape": list(shapes[0]), "ssm_shape": list(shapes[1]),
            "dtypes": [str(d).removeprefix("torch.") for d in dtypes]}


if __name__ == "__main__":
    main()
