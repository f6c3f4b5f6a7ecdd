"""Apply a `PrunePlan` in memory: to a state dict, or to a model (a new transformers model of the same class).

Each tensor is cut with `tensor_indices` (plan.py), the same function the streaming apply uses;
dropped blocks are left out and the others renumbered. Fused routed experts ([E, ...], `stacked`
specs) are cut slice by slice: the kept experts, each with its own kept neurons, stacked again.
Dropped experts of the checkpoint layout (one tensor per expert) are left out and the others renumbered.
A plan with compensation (`compensation.py`) refits the output projections whose input is cut instead
of cutting their columns; a plan with a hidden rotation (`rotation.py`) then contracts each tensor's
hidden dimensions.
"""

from __future__ import annotations

from minitron.models.tensors import (
    canonical_name,
    checkpoint_name,
    model_specs,
    renumber_expert,
    renumber_layer,
)
from minitron.prune.plan import PrunePlan, stacked_indices, tensor_indices


def prune_tensor(t, idx):
    """`t` restricted to the kept indices of each dimension (`idx[d]` None keeps dimension d whole)."""
    import torch

    for d, ix in enumerate(idx):
        if ix is not None:
            t = t.index_select(d, torch.as_tensor(ix, dtype=torch.long, device=t.device))
    return t.contiguous()


_INT_VIEW = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


def prune_tensor_fast(t, idx):
    """`prune_tensor` for CPU tensors, via `numpy.take` on a same-width integer view.

    Bit-identical to `prune_tensor` (it moves bits, never values). `index_select` along an inner
    dimension of a bf16 tensor is ~5x slower than a plain copy on CPU; `numpy.take` runs at copy
    speed, which is what keeps streaming a 12B checkpoint I/O-bound.
    """
    import numpy as np
    import torch

    if t.device.type != "cpu" or t.numel() == 0:
        return prune_tensor(t, idx)
    int_dtype = getattr(torch, _INT_VIEW[t.element_size()])
    a = t.contiguous().view(int_dtype).numpy()
    for d, ix in enumerate(idx):
        if ix is not None:
            a = np.take(a, np.asarray(ix, dtype=np.int64), axis=d)
    return torch.from_numpy(np.ascontiguousarray(a)).view(t.dtype)


def prune_stacked(t, spec, plan: PrunePlan):
    """A fused [E, ...] expert tensor: the kept experts' slices, each cut with its own indices, stacked."""
    import torch

    return torch.stack([prune_tensor(t[j], idx) for j, idx in stacked_indices(spec, plan)]).contiguous()


def kept_name(name: str, spec, plan: PrunePlan) -> str | None:
    """The canonical name of a source tensor in the pruned model (None: its block or expert is dropped)."""
    if spec.layer is not None and spec.layer in set(plan.dropped_layers):
        return None
    if spec.expert is not None:
        renumber = plan.new_expert_index(spec.layer)
        if spec.expert not in renumber:
            return None
        name = renumber_expert(name, renumber[spec.expert])
    return renumber_layer(name, plan.new_index()[spec.layer]) if spec.layer is not None else name


def prune_state_dict(state_dict: dict, plan: PrunePlan, *, layout: str = "module") -> dict:
    """A new state dict for `plan.target()`; keys keep their prefix (`model.`/`backbone.`) and are renumbered.

    `layout`: "module" for a model's `state_dict()` (fused MoE experts), "checkpoint" for tensors as
    stored in safetensors files (one tensor per expert).
    """
    specs = model_specs(plan.source, layout=layout)
    rot = plan.rotation
    if rot is not None:
        rot.folds = {canonical_name(k): t.detach().float() for k, t in state_dict.items() if canonical_name(k) in rot.norms}
    out = {}
    for key, t in state_dict.items():
        name = canonical_name(key)
        if name not in specs:
            if name == "lm_head.weight" and plan.source.tie_word_embeddings:
                continue  # tied: transformers re-ties it to the embeddings
            raise KeyError(f"{key}: not a tensor of this architecture")
        spec = specs[name]
        new_name = kept_name(name, spec, plan)
        if new_name is None:
            continue
        prefix = key[: len(key) - len(name)]
        if spec.stacked:
            cut = prune_stacked(t, spec, plan)
        else:
            idx = tensor_indices(spec, plan)
            comp = plan.compensation
            cut = comp.cut(name, t, idx) if comp is not None and comp.covers(name, idx) else prune_tensor(t, idx)
        if rot is not None:
            cut = rot.apply(name, spec, cut)
        out[checkpoint_name(new_name, prefix) if prefix else new_name] = cut
    return out


def prune_model(model, plan: PrunePlan):
    """A new transformers model of `plan.target()` holding the kept slices of `model` (strict load)."""
    import torch
    from transformers import AutoModelForCausalLM

    from minitron.models.checkpoint import hf_config

    config = hf_config(plan.target().to_config())
    dtype = next(model.parameters()).dtype
    sd = prune_state_dict(model.state_dict(), plan)
    with torch.device("meta"):
        new = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if "lm_head.weight" not in sd and "lm_head.weight" in new.state_dict():  # tied: the embedding, re-tied below
        sd["lm_head.weight"] = sd[f"model.{plan.source.impl.modules.embedding}.weight"]
    new.load_state_dict(sd, strict=True, assign=True)
    if plan.source.tie_word_embeddings:
        new.tie_weights()
    plan.source.impl.fix_meta_model(new, new.config, next(model.parameters()).device)  # rotary tables
    return new.eval()
