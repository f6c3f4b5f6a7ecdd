"""Hidden channels in the principal basis: rotate the residual stream, then keep its top components.

Cutting hidden channels (Minitron) keeps a subset of the residual stream's coordinates. Every
block reads that stream through an RMSNorm and writes back into it, so the model is unchanged by
any orthogonal change of basis Q of the stream once each norm's weight w is folded into the
matrices that read its output (SliceGPT, Ashkboos et al. 2024, with one Q for the whole stream so
that the architecture stays the same):

    embedding E        -> E Q                      (rows are points of the stream)
    reader W [o, n]    -> (W diag(w)) Q            (in_proj, q/k/v, up/gate, router, lm_head)
    writer W [n, i]    -> Q^T W, bias b -> Q^T b   (out_proj, o_proj, down_proj, experts' down)
    norm weight w      -> 1

Q is the eigenbasis of the calibration covariance of the normalised stream, summed over every
norm's input (`hidden_covariance` in the scores: C = mean over tokens and norms of u u^T,
u = x / rms(x)), columns by descending eigenvalue. Keeping the first k columns keeps the most
variance a k-dimensional stream can hold; hidden-channel selection is the special case where Q
is a permutation. Each norm then averages over k components instead of n, which rescales its
output by rms_k / rms_n; the norms are set to the scalar that undoes it on the calibration data,

    scale = sqrt( (sum of the k largest eigenvalues / trace C) * n / k ).

Each tensor is contracted along each of its hidden dimensions with Q[:, :k] (`apply`), after the
other dimensions are cut as usual; readers first take their norm's weight. Families declare which
norm feeds which tensors (`Family.hidden_norm_readers`); a family that does not, a tied `lm_head`
(its norm cannot be folded into the embedding) and a reader no norm claims are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minitron.errors import InputError
from minitron.models.tensors import HIDDEN, model_specs

FLAG = "--hidden-basis"
BASES = ("auto", "pca", "channels")
COVARIANCE = "hidden_covariance"  # the scores tensor [n, n]


@dataclass
class HiddenRotation:
    basis: object  # [n, n] float64, orthonormal columns by descending variance
    variance: object  # [n] float64 eigenvalues, descending
    norms: frozenset  # canonical names of the norm weights on the residual stream
    reader_norm: dict  # canonical reader name -> the norm weight it folds
    k: int = 0  # components kept (set by `keep`)
    folds: dict = field(default_factory=dict)  # norm name -> its weight (float32), read from the source

    @property
    def n(self) -> int:
        return int(self.basis.shape[0])

    def keep(self, k: int) -> HiddenRotation:
        """This rotation keeping the first `k` components (the source tensors' weights are shared)."""
        return HiddenRotation(self.basis, self.variance, self.norms, self.reader_norm, k, self.folds)

    def kept_variance(self) -> float:
        v = self.variance.clamp_min(0)
        return float(v[: self.k].sum() / v.sum()) if float(v.sum()) > 0 else 1.0

    def scale(self) -> float:
        """The norms' new (constant) weight: rms over k components / rms over n, on the calibration data."""
        return (self.kept_variance() * self.n / self.k) ** 0.5

    def apply(self, name: str, spec, t):
        """Tensor `t` of canonical `name` (other dimensions already cut), its hidden dimensions -> k."""
        import torch

        if name in self.norms:
            return torch.full((self.k,), self.scale(), dtype=t.dtype, device=t.device)
        dims = [d for d, segs in enumerate(spec.dims) if any(a == HIDDEN for a, _ in segs)]
        if not dims:
            return t
        q = self.basis[:, : self.k].to(device=t.device, dtype=torch.float32)
        out = t.float()
        fold = self.reader_norm.get(name)
        if fold is not None:
            out = out * self.folds[fold].to(out.device)  # along the last (input) dimension
        for d in dims:
            out = torch.movedim(torch.movedim(out, d, -1) @ q, -1, d)
        return out.to(t.dtype).contiguous()

    def record(self) -> dict:
        """What `prune --json` and minitron.json say of the basis."""
        return {"basis": "pca", "components": self.k, "of": self.n,
                "kept_variance": round(self.kept_variance(), 6), "norm_scale": round(self.scale(), 6)}


def from_covariance(arch, covariance) -> HiddenRotation:
    """The rotation of `arch` from the scores' covariance; raises InputError (naming --hidden-basis)
    where the family cannot be rotated."""
    import torch

    readers = unsupported(arch)
    if isinstance(readers, str):
        raise InputError(readers, flag=FLAG)
    c = covariance.double()
    c = (c + c.T) / 2
    ev, vecs = torch.linalg.eigh(c)
    order = torch.argsort(ev, descending=True, stable=True)
    basis = vecs[:, order]
    # a deterministic sign per component (eigh's is arbitrary): its largest entry positive
    flip = torch.sign(basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)))
    basis = basis * torch.where(flip == 0, torch.ones_like(flip), flip)
    norms, reader_norm = readers
    return HiddenRotation(basis, ev[order], norms, reader_norm, k=arch.hidden_size)


def unsupported(arch):
    """Why `arch` cannot be rotated (a message), or (norm names, reader -> norm) when it can."""
    if arch.tie_word_embeddings:
        return "a tied lm_head cannot take the final norm's weight; use --hidden-basis channels"
    declared = arch.impl.hidden_norm_readers(arch)
    if declared is None:
        return f"the {arch.family} family does not declare its norms' readers; use --hidden-basis channels"
    norms = frozenset(declared)
    reader_norm: dict = {}
    specs = {**model_specs(arch), **model_specs(arch, layout="module")}  # fused experts are named apart
    for spec in specs.values():
        hid = [d for d, segs in enumerate(spec.dims) if any(a == HIDDEN for a, _ in segs)]
        if any(len(spec.dims[d]) != 1 for d in hid):
            return f"{spec.name} mixes hidden channels with others in one dimension; use --hidden-basis channels"
        embedding = spec.layer is None and spec.name.startswith(arch.impl.modules.embedding)
        if spec.name in norms or not hid or len(spec.dims) < 2 or hid[-1] != len(spec.dims) - 1 or embedding:
            continue  # a norm, a tensor off the stream, a writer's bias, a writer, or the embedding
        owner = [n for n, prefixes in declared.items() if any(spec.name.startswith(p) for p in prefixes)]
        if len(owner) != 1:
            return f"{spec.name} reads the hidden channels but no single norm is declared for it"
        reader_norm[spec.name] = owner[0]
    return norms, reader_norm


def resolve(basis: str, arch, scores, hidden_size: int | None):
    """`--hidden-basis` -> (a HiddenRotation or None, the reason recorded in the output)."""
    if basis not in BASES:
        raise InputError(f"expected one of {', '.join(BASES)}, got {basis!r}", flag=FLAG)
    if basis == "channels":
        return None, "channels (asked)"
    has_cov = scores is not None and COVARIANCE in _names(scores)
    if basis == "pca":
        if not has_cov:
            raise InputError("these scores have no hidden_covariance (scores of an earlier minitron); re-run "
                             "`minitron score`", flag=FLAG)
        return from_covariance(arch, scores[COVARIANCE]), "pca (asked)"
    why = None if has_cov else "the scores have no hidden_covariance"
    if why is None:
        why = unsupported(arch)
        why = why if isinstance(why, str) else None
    if why is None and hidden_size is not None and hidden_size >= arch.hidden_size:
        why = "the hidden size is not cut"
    if why is not None:
        return None, f"channels ({why})"
    return from_covariance(arch, scores[COVARIANCE]), "pca"


def _names(scores):
    return scores.tensors.keys() if hasattr(scores, "tensors") else scores.keys()
