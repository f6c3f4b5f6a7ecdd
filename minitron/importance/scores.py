"""`Scores`: the importance of every prunable unit, as saved in `scores.safetensors`.

Tensors (all finite, non-negative, larger = more important):

    hidden          [hidden_size]
    ffn             [n_ffn_layers, intermediate_size]        rows in layer order of the layers with an MLP
    attention_heads [n_attention_layers, num_attention_heads]
    kv_heads        [n_attention_layers, num_key_value_heads]
    mamba_heads     [n_mamba_layers, mamba_num_heads]
    mamba_head_dim  [n_mamba_layers, mamba_head_dim]
    experts         [n_moe_layers, n_routed_experts]          routed experts, by the `--expert-metric`
    experts_<metric> [n_moe_layers, n_routed_experts]         the other expert metrics (same pass)
    moe_ffn         [n_moe_layers, n_routed_experts, moe_intermediate_size]   each expert's neurons
    shared_expert_ffn [n_moe_layers, moe_shared_expert_intermediate_size]
    layers          [num_layers]                              for the chosen layer metric
    layers_<metric> [num_layers]                              optional, other metrics

`minitron.json` beside it records the model fingerprint the scores belong to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from minitron.errors import InputError
from minitron.models.architecture import Architecture

SCORES_FILE = "scores.safetensors"
WIDTH_AXES = ("hidden", "ffn", "attention_heads", "kv_heads", "mamba_heads", "mamba_head_dim")
MOE_AXES = ("experts", "moe_ffn", "shared_expert_ffn")  # only in the scores of a model with MoE layers


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    n_ffn, n_attn, n_mamba = len(arch.ffn_layers()), len(arch.attention_layers()), len(arch.mamba_layers())
    return {
        "hidden": (arch.hidden_size,),
        "ffn": (n_ffn, arch.intermediate_size if n_ffn else 0),
        "attention_heads": (n_attn, arch.num_attention_heads if n_attn else 0),
        "kv_heads": (n_attn, arch.num_key_value_heads if n_attn else 0),
        "mamba_heads": (n_mamba, arch.mamba_num_heads if n_mamba else 0),
        "mamba_head_dim": (n_mamba, arch.mamba_head_dim if n_mamba else 0),
        "layers": (arch.num_layers,),
        **moe_shapes(arch),
    }


def moe_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The MoE score tensors (none for a model without MoE layers)."""
    n = len(arch.moe_layers())
    if not n:
        return {}
    e = arch.n_routed_experts
    return {"experts": (n, e), "moe_ffn": (n, e, arch.moe_intermediate_size),
            "shared_expert_ffn": (n, arch.moe_shared_expert_intermediate_size)}


@dataclass
class Scores:
    tensors: dict  # name -> torch.Tensor (float32, CPU)
    metric: str = "kl"
    fingerprint: str | None = None
    meta: dict = field(default_factory=dict)
    width_metrics: dict = field(default_factory=dict)  # axis -> signal chosen (signals.py); {}: the defaults

    def __getitem__(self, name: str):
        return self.tensors[name]

    def get(self, name: str, default=None):
        return self.tensors.get(name, default)

    def validate(self, arch: Architecture, *, flag: str = "--scores") -> None:
        import torch

        for name, shape in expected_shapes(arch).items():
            if name not in self.tensors:
                raise InputError(f"scores have no {name!r} tensor", flag=flag)
            got = tuple(self.tensors[name].shape)
            if got != shape:
                raise InputError(
                    f"scores tensor {name!r} has shape {list(got)} but the model needs {list(shape)} "
                    "(scores of another model?)",
                    flag=flag,
                )
        for name, t in self.tensors.items():
            if not torch.isfinite(t).all() or (t < 0).any():
                raise InputError(f"scores tensor {name!r} has negative or non-finite values", flag=flag)

    def save(self, out_dir: str | Path) -> Path:
        """Write `scores.safetensors`: byte-identical for identical scores (keys and metadata sorted)."""
        path = Path(out_dir) / SCORES_FILE
        meta = {"metric": self.metric, "fingerprint": self.fingerprint or ""}
        if self.width_metrics:  # absent for the defaults: their files are unchanged
            from minitron.importance.signals import format_metrics

            meta["width_metrics"] = format_metrics(self.width_metrics)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self.tensors.items()}
        write_safetensors(tensors, path, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, *, flag: str = "--scores") -> Scores:
        """From a scores directory (or the `scores.safetensors` file itself)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        p = Path(path)
        f = p / SCORES_FILE if p.is_dir() else p
        if not f.is_file():
            raise InputError(f"no {SCORES_FILE} in {p}", flag=flag)
        try:
            tensors = load_file(str(f))
            with safe_open(str(f), "pt") as h:
                meta = h.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{f}: cannot read scores ({e})", flag=flag) from None
        prov = {}
        if (f.parent / "minitron.json").is_file():
            try:
                prov = json.loads((f.parent / "minitron.json").read_text())
            except json.JSONDecodeError:
                prov = {}
        fp = meta.get("fingerprint") or prov.get("inputs", {}).get("model_fingerprint")
        chosen = dict(item.split("=", 1) for item in meta.get("width_metrics", "").split(",") if "=" in item)
        return cls(tensors=tensors, metric=meta.get("metric", "kl"), fingerprint=fp or None, meta=prov,
                   width_metrics=chosen)


def write_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """A safetensors file with a deterministic header (the library orders metadata by hash).

    Layout: 8-byte little-endian header length, the JSON header (space-padded to a multiple of 8),
    then each tensor's bytes in sorted-name order.
    """
    import struct

    codes = {"torch.float32": "F32", "torch.float64": "F64", "torch.bfloat16": "BF16", "torch.float16": "F16",
             "torch.int64": "I64", "torch.int32": "I32"}
    header: dict = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(-1).view(torch_uint8()).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": codes[str(t.dtype)], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def torch_uint8():
    import torch

    return torch.uint8
