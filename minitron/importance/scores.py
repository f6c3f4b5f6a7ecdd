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
    hidden_covariance [hidden_size, hidden_size]              mean u u^T of the normalised residual stream
                                                              (u = x / rms(x) at every norm's input; not a
                                                              score: the basis of `prune --hidden-basis pca`)

With `minitron score --compensation` (auto: on for models whose matrices total under 1 GiB), a
second file, `compensation.safetensors`, holds for each output projection the mean x x^T of its input
(`gram.ffn.<k>` [intermediate]^2 for down_proj, `gram.attention.<k>` [heads * head_dim]^2 for o_proj,
`gram.mamba.<k>` [H*P]^2 for out_proj, `gram.shared_ffn.<k>`; k counts the layers with that
component). They are not scores: `prune --compensation` refits the kept columns with them
(`minitron.prune.compensation`), and reads them one at a time from the file.

`minitron.json` beside it records the model fingerprint the scores belong to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from minitron.axes import SCORED
from minitron.errors import InputError
from minitron.models.architecture import Architecture
from minitron.models.safetensors_io import write_file as write_safetensors

SCORES_FILE = "scores.safetensors"
GRAMS_FILE = "compensation.safetensors"
GRAM_PREFIX = "gram."
WIDTH_AXES = tuple(ax.unit for ax in SCORED if ax.component != "moe")
MOE_AXES = tuple(ax.unit for ax in SCORED if ax.component == "moe")  # only in the scores of a model with MoE layers


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor `scores.safetensors` must hold for `arch` (the MoE ones only with MoE layers)."""
    out = {ax.unit: ax.score_shape(arch) for ax in SCORED if ax.component != "moe" or ax.present(arch)}
    out["layers"] = (arch.num_layers,)
    return out


@dataclass
class Scores:
    tensors: dict  # name -> torch.Tensor (float32, CPU)
    metric: str = "kl"
    fingerprint: str | None = None
    width_metrics: dict = field(default_factory=dict)  # axis -> signal chosen (signals.py); {}: the defaults
    grams_file: Path | None = None  # compensation.safetensors beside a loaded scores file, if there is one

    def __getitem__(self, name: str):
        return self.tensors[name]

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
        cov = self.tensors.get("hidden_covariance")
        if cov is not None and tuple(cov.shape) != (arch.hidden_size, arch.hidden_size):
            raise InputError(f"scores tensor 'hidden_covariance' has shape {list(cov.shape)} but the model needs "
                             f"{[arch.hidden_size] * 2}", flag=flag)
        for name, t in self.tensors.items():
            if name.startswith(GRAM_PREFIX):
                if t.dim() != 2 or t.shape[0] != t.shape[1] or not torch.isfinite(t).all():
                    raise InputError(f"scores tensor {name!r} is not a finite square matrix", flag=flag)
                continue
            if name == "hidden_covariance":
                if not torch.isfinite(t).all():
                    raise InputError("scores tensor 'hidden_covariance' has non-finite values", flag=flag)
                continue
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
        grams = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith(GRAM_PREFIX)]}
        write_safetensors(tensors, path, metadata=meta)
        if grams:
            write_safetensors(grams, path.parent / GRAMS_FILE, metadata={"fingerprint": self.fingerprint or ""})
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
        grams = f.parent / GRAMS_FILE
        return cls(tensors=tensors, metric=meta.get("metric", "kl"), fingerprint=fp or None, width_metrics=chosen,
                   grams_file=grams if grams.is_file() else None)
