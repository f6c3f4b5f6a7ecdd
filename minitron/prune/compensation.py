"""Least-squares compensation of the output projections (`minitron prune --compensation`).

Cutting FFN neurons, attention heads or Mamba heads / head-dim channels removes columns from the
matrix that writes that component's output into the residual stream (down_proj, o_proj, out_proj).
The kept columns were fitted with the dropped ones beside them; with the input statistics of the
calibration data they can be refitted to stand in for them. For an output projection W [out, n]
whose input x [n] keeps the channels K, the W' [out, k] that minimises E ||W x - W' x_K||^2 over the
calibration tokens is

    W' = W C[:, K] (C[K, K] + lambda I)^-1,     C = E[x x^T]  (the `gram.*` tensors of `minitron score`)

with a ridge lambda = RIDGE * mean(diag C[K, K]) for a well-conditioned solve (swept: 1e-3 and 1e-2
tie, 1e-1 is worse; BENCHMARKS.md "Compensation"). The statistics are the original model's: each
projection is refitted as if its input were unchanged (the other axes' cuts are not propagated).
With every channel kept, W' = W: nothing changes. The rows (hidden) are cut or rotated afterwards as
usual (`rotation.py`), which commutes with the refit.

Which tensors: every 2-D tensor of a layer that reads one cut axis (FFN, attention query heads,
Mamba inner channels, the shared expert's neurons) and writes the hidden size. The routed experts'
own down_proj are not compensated (their statistics per expert would be [E, F, F]).
"""

from __future__ import annotations

from pathlib import Path

from minitron.errors import InputError
from minitron.models.tensors import FFN, HIDDEN, MAMBA_INNER, SHARED_FFN, Q, model_specs

FLAG = "--compensation"
MODES = ("auto", "on", "off")
RIDGE = 1e-2
AUTO_MAX_BYTES = 1 << 30  # `score --compensation auto` collects the statistics when they total at most this
# the cut axis a writer reads -> (the component whose layers number the statistic, its name in the file)
_READS = {FFN: ("ffn", "ffn"), Q: ("attention", "attention"), MAMBA_INNER: ("mamba", "mamba"),
          SHARED_FFN: ("moe", "shared_ffn")}


def writers(arch) -> dict[str, str]:
    """Canonical name of each output projection -> the `gram.*` statistic of its input."""
    out = {}
    positions = {comp: {i: k for k, i in enumerate(arch.layers_with(comp))} for comp, _ in _READS.values()}
    for spec in model_specs(arch).values():
        if spec.layer is None or spec.stacked or spec.expert is not None or len(spec.dims) != 2:
            continue
        rows, cols = spec.dims
        if len(rows) != 1 or rows[0][0] != HIDDEN or len(cols) != 1 or cols[0][0] not in _READS:
            continue
        comp, stat = _READS[cols[0][0]]
        k = positions[comp].get(spec.layer)
        if k is not None:
            out[spec.name] = f"gram.{stat}.{k}"
    return out


def gram_bytes(arch) -> int:
    """Bytes of every statistic `score --compensation` writes (float32)."""
    a = arch
    sizes = ((a.ffn_layers(), a.intermediate_size), (a.attention_layers(), a.num_attention_heads * a.head_dim),
             (a.mamba_layers(), a.mamba_intermediate), (a.moe_layers(), a.moe_shared_expert_intermediate_size))
    return sum(len(layers) * n * n * 4 for layers, n in sizes)


def collect(mode: str, arch) -> tuple[bool, str]:
    """`score --compensation` -> (collect the statistics?, the reason recorded in the output)."""
    from minitron.fmt import fmt_bytes

    if mode not in MODES:
        raise InputError(f"expected one of {', '.join(MODES)}, got {mode!r}", flag=FLAG)
    need = gram_bytes(arch)
    if mode == "off":
        return False, "off (asked)"
    if mode == "on":
        return True, f"on (asked; {fmt_bytes(need)})"
    if need > AUTO_MAX_BYTES:
        return False, f"off ({fmt_bytes(need)} of statistics, over auto's {fmt_bytes(AUTO_MAX_BYTES)}; --compensation on)"
    return True, f"on ({fmt_bytes(need)})"


class Compensation:
    """The refit of every compensated tensor; statistics read on demand from `source`
    (a dict of tensors, or the path of `compensation.safetensors`)."""

    def __init__(self, arch, source, ridge: float = RIDGE):
        self.names = writers(arch)
        self.ridge = ridge
        self._source = source

    def _gram(self, stat: str):
        if isinstance(self._source, dict):
            return self._source[stat]
        from safetensors import safe_open

        with safe_open(str(self._source), framework="pt") as h:
            return h.get_tensor(stat)

    def covers(self, name: str, idx) -> bool:
        """Whether tensor `name`, cut with `idx`, is refitted (its input is cut)."""
        return name in self.names and len(idx) == 2 and idx[1] is not None

    def cut(self, name: str, t, idx):
        """`t` [rows, n] (the source tensor's kept rows or all of them) -> [len(idx[0]) or rows, k], refitted."""
        import torch

        from minitron.prune.apply import prune_tensor

        c = self._gram(self.names[name]).double()
        if tuple(c.shape) != (t.shape[1], t.shape[1]):
            raise InputError(f"{self.names[name]} is {list(c.shape)} but {name} reads {t.shape[1]} channels "
                             "(statistics of another model?)", flag=FLAG)
        keep = torch.as_tensor(idx[1], dtype=torch.long)
        if len(keep) == t.shape[1] and bool((keep == torch.arange(t.shape[1])).all()):
            return prune_tensor(t, (idx[0], None))  # nothing cut: nothing to refit
        ckk = c[keep][:, keep]
        lam = self.ridge * float(ckk.diagonal().mean().clamp_min(1e-30))
        m = torch.linalg.solve(ckk + lam * torch.eye(len(keep), dtype=c.dtype), c[keep, :]).T  # [n, k]
        rows = prune_tensor(t, (idx[0], None))
        return (rows.double() @ m).to(t.dtype).contiguous()

    def refitted(self, plan) -> list[str]:
        """The tensors `plan` refits: those of kept layers whose input it cuts."""
        from minitron.prune.plan import tensor_indices

        specs = model_specs(plan.source)
        dropped = set(plan.dropped_layers)
        return [n for n in self.names if specs[n].layer not in dropped and self.covers(n, tensor_indices(specs[n], plan))]

    def record(self, plan) -> dict:
        """What `prune --json` and minitron.json say of the refit."""
        return {"tensors": len(self.refitted(plan)), "ridge": self.ridge}


def resolve(mode: str, arch, scores) -> tuple[Compensation | None, str]:
    """`prune --compensation` -> (a Compensation or None, the reason recorded in the output)."""
    if mode not in MODES:
        raise InputError(f"expected one of {', '.join(MODES)}, got {mode!r}", flag=FLAG)
    if mode == "off":
        return None, "off (asked)"
    source = None
    if scores is not None:
        in_memory = {k: v for k, v in getattr(scores, "tensors", scores).items() if k.startswith("gram.")}
        source = in_memory or getattr(scores, "grams_file", None)
    if not source:
        if mode == "on":
            raise InputError("these scores have no compensation statistics; re-run `minitron score` with "
                             "--compensation on", flag=FLAG)
        return None, "off (the scores have no compensation statistics)"
    comp = Compensation(arch, source)
    if not comp.names:
        if mode == "on":
            raise InputError(f"the {arch.family} family has no output projection to compensate", flag=FLAG)
        return None, "off (no output projection to compensate)"
    if not isinstance(source, dict):
        _check_file(Path(source), comp)
    return comp, "on" if mode == "auto" else "on (asked)"


def _check_file(path: Path, comp: Compensation) -> None:
    """Every statistic the refit will read is in the file (the shapes are checked as each is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as h:
            have = set(h.keys())
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: cannot read ({e})", flag=FLAG) from None
    missing = sorted(set(comp.names.values()) - have)
    if missing:
        raise InputError(f"{path} has no {missing[0]} (statistics of another model?)", flag=FLAG)
