"""The intermediate-state loss of `minitron distill --intermediate-weight` (Minitron's L_is).

Besides the logits, the student is taught the teacher's residual stream after every one of its
layers. Student layer j is paired with the teacher layer it was cut from, `layer_map[j]` (the
kept layers of `minitron prune`, from the student's minitron.json; the identity when nothing was
dropped), and the teacher's stream is carried into the student's hidden basis by one linear map
P [n_teacher, n_student] (`hidden_map`):

    L_is = 1/J  sum_j  sum_t || h_s[j, t] - h_t[layer_map[j], t] P ||^2  /  (N c_j)

over the J student layers and the N positions the logit loss counts (the same mask), with
c_j = the mean over tokens of || h_t[layer_map[j]] P ||^2 on the run's first training block
(fixed, and the same on every rank: the loss is a sum over tokens, so micro-batching and ranks do not
change it). The
objective is KD / N + weight x L_is.

P is found from the two embedding matrices by least squares, P = argmin || E_t P - E_s ||:
`minitron prune` writes the student's embedding as the teacher's times exactly the map its
stream went through (kept channels, or the first k components of the principal basis), so P is
that map, with a residual of float rounding (reported as `map_residual`). For a student that
has trained since, it is the best linear fit.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from minitron.errors import InputError

FLAG = "--intermediate-weight"


def layer_map(student_dir: Path, teacher_arch, student_arch) -> list[int]:
    """The teacher layer of each student layer; raises InputError naming the flag when unknown."""
    n_t, n_s = teacher_arch.num_layers, student_arch.num_layers
    dropped = _dropped_layers(Path(student_dir))
    if dropped is not None:
        kept = [i for i in range(n_t) if i not in set(dropped)]
        if len(kept) != n_s:
            raise InputError(f"the student's minitron.json drops {len(dropped)} of {n_t} teacher layers, but the "
                             f"student has {n_s} layers: it was not pruned from this teacher", flag=FLAG)  # fmt: skip
    elif n_s == n_t:
        kept = list(range(n_t))
    else:
        raise InputError(f"the student has {n_s} layers and the teacher {n_t}, and the student has no minitron.json "
                         "from `minitron prune` saying which teacher layers it kept", flag=FLAG)  # fmt: skip
    tp, sp = teacher_arch.pattern, student_arch.pattern
    if tp and sp and "".join(tp[i] for i in kept) != sp:
        raise InputError(f"the student's layer types ({sp}) are not the teacher's kept layers "
                         f"({''.join(tp[i] for i in kept)})", flag=FLAG)  # fmt: skip
    return kept


def _dropped_layers(student_dir: Path) -> list[int] | None:
    """`dropped_layers` of the prune that wrote this directory, or None (no prune record)."""
    path = student_dir / "minitron.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("command") != "prune":
        return None
    dropped = (doc.get("result") or {}).get("indices", {}).get("dropped_layers")
    return [int(i) for i in dropped] if isinstance(dropped, list) else None


def hidden_map(teacher, student, ridge: float = 1e-8) -> tuple[torch.Tensor, float]:
    """(P [n_t, n_s] float32, relative residual ||E_t P - E_s|| / ||E_s||) from the input embeddings."""
    e_t = _full(teacher.get_input_embeddings().weight).detach().double().cpu()
    e_s = _full(student.get_input_embeddings().weight).detach().double().cpu()
    gram = e_t.T @ e_t
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    p = torch.linalg.solve(gram, e_t.T @ e_s)
    residual = float(torch.linalg.norm(e_t @ p - e_s) / torch.linalg.norm(e_s).clamp_min(1e-30))
    return p.float(), residual


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def decoder_layers(model):
    """The decoder blocks of a transformers causal LM (`model.model.layers`)."""
    inner = getattr(model, "module", model)  # DDP
    layers = getattr(getattr(inner, "model", None), "layers", None)
    if layers is None:
        raise InputError(f"{type(inner).__name__} has no model.layers to read the intermediate states from", flag=FLAG)
    return layers


@contextmanager
def capture(model, detach: bool, layers=None):
    """{layer index: its output hidden states} for the forward passes run inside the block; `layers`:
    the indices to keep (default all; the teacher's kept layers, so its dropped ones cost no memory)."""
    states: dict[int, torch.Tensor] = {}
    wanted = None if layers is None else set(layers)

    def hook(i):
        def fn(_module, _args, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            states[i] = h.detach() if detach else h

        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(decoder_layers(model))
               if wanted is None or i in wanted]  # fmt: skip
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


class IntermediateLoss:
    """The L_is term: pairs the captured states, projects the teacher's, sums the normalised squares."""

    def __init__(self, layer_map: list[int], p: torch.Tensor, residual: float):
        self.layer_map, self.p, self.residual = list(layer_map), p, residual
        self.scale: torch.Tensor | None = None  # c_j, set by `calibrate`

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return h.float() @ self.p.to(h.device)

    def calibrate(self, t_states: dict) -> None:
        """c_j from the teacher's states of one block (every rank computes the same)."""
        self.scale = torch.stack([self.project(t_states[i]).pow(2).sum(-1).mean() for i in self.layer_map]).clamp_min(1e-12)

    def sum(self, t_states: dict, s_states: dict, positions: torch.Tensor | None) -> torch.Tensor:
        """sum over the counted positions and layers of ||h_s - h_t P||^2 / (J c_j) (divide by N outside)."""
        total = None
        for j, i in enumerate(self.layer_map):
            d = (s_states[j].float() - self.project(t_states[i])).pow(2).sum(-1)  # [b, L]
            if positions is not None:
                d = d * positions.to(d.dtype)
            term = d.sum() / self.scale[j].to(d.device)
            total = term if total is None else total + term
        return total / len(self.layer_map)

    def state_dict(self) -> dict:
        return {"layer_map": self.layer_map, "map": self.p, "map_residual": self.residual, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> IntermediateLoss:
        loss = cls(state["layer_map"], state["map"], state["map_residual"])
        loss.scale = state["scale"]
        return loss

    def record(self) -> dict:
        """What the summary (and minitron.json) says of it."""
        return {"layer_map": self.layer_map, "map_shape": list(self.p.shape), "map_residual": self.residual}
