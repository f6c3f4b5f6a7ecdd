"""Baseline importance scores for `benchmarks/quality.py`: weight magnitude and seeded random.

Both return the tensors of `minitron.importance.scores.Scores` (same names and shapes as
`minitron score` writes), so `minitron prune` ranks units with them exactly as it ranks by
activation scores. Definitions of the magnitude ranking, per axis (teacher weights, fp32):

    hidden          [H]            L2 norm of the embedding column of the channel
    ffn             [n_mlp, F]     L2(up_proj row f) x L2(down_proj column f)
    attention_heads [n_attn, nq]   L2 norm of the head's q_proj rows
    kv_heads        [n_attn, nkv]  L2 norm of the head's k_proj and v_proj rows together
    mamba_heads     [n_mamba, Hm]  L2 norm of the head's x rows of in_proj (the second H·P block)
    mamba_head_dim  [n_mamba, P]   L2 norm of x rows of channel p, over every head of the layer
    experts         [n_moe, E]     L2 norm of the expert's up_proj and down_proj weights together
    moe_ffn         [n_moe, E, f]  L2(expert up_proj row f) x L2(expert down_proj column f)
    shared_expert_ffn [n_moe, fs]  as `ffn`, on the shared expert
    layers          [num_layers]   all ones (the width benchmark never drops a layer)

Random: every tensor uniform in [0, 1) from one `torch.Generator` seeded with `seed`, drawn in
sorted-name order (so a seed fixes the ranking).
"""

from __future__ import annotations

import torch

from minitron.importance.scores import expected_shapes
from minitron.models.architecture import Architecture
from minitron.models.layer_types import ATTENTION, MAMBA, MLP, MOE
from minitron.models.tensors import canonical_name


def load_state_dict(model_dir) -> dict:
    """Every tensor of a checkpoint directory, by canonical name (no `backbone.`/`model.` prefix), fp32."""
    from safetensors.torch import load_file

    from minitron.models.checkpoint import open_checkpoint

    out = {}
    for f in open_checkpoint(model_dir, require_weights=True).shard_files():
        for k, v in load_file(str(f)).items():
            out[canonical_name(k)] = v.float()
    return out


def _layers_of(arch: Architecture, char: str) -> list[int]:
    return [i for i, c in enumerate(arch.pattern) if c == char]


def magnitude_scores(state_dict: dict, arch: Architecture) -> dict:
    """Weight-magnitude importance of every width unit (see the module docstring). Pure: tensors in, out."""
    sd = {canonical_name(k): v.float() for k, v in state_dict.items()}
    out = {"hidden": sd["embeddings.weight"].norm(dim=0)}  # [V, H] -> [H]

    ffn = []
    for i in _layers_of(arch, MLP):
        up = sd[f"layers.{i}.mixer.up_proj.weight"]  # [F, H]
        down = sd[f"layers.{i}.mixer.down_proj.weight"]  # [H, F]
        ffn.append(_neuron_magnitude(up, down))
    out["ffn"] = torch.stack(ffn) if ffn else torch.zeros(expected_shapes(arch)["ffn"])

    q_scores, kv_scores = [], []
    nq, nkv = arch.num_attention_heads, arch.num_key_value_heads
    for i in _layers_of(arch, ATTENTION):
        q = sd[f"layers.{i}.mixer.q_proj.weight"]  # [nq*d, H], head-major
        k = sd[f"layers.{i}.mixer.k_proj.weight"]  # [nkv*d, H]
        v = sd[f"layers.{i}.mixer.v_proj.weight"]
        q_scores.append(q.reshape(nq, -1).norm(dim=1))
        kv_scores.append(torch.cat([k.reshape(nkv, -1), v.reshape(nkv, -1)], dim=1).norm(dim=1))
    out["attention_heads"] = torch.stack(q_scores) if q_scores else torch.zeros(expected_shapes(arch)["attention_heads"])
    out["kv_heads"] = torch.stack(kv_scores) if kv_scores else torch.zeros(expected_shapes(arch)["kv_heads"])

    heads, dims = [], []
    hm, p, inner = arch.mamba_num_heads, arch.mamba_head_dim, arch.mamba_intermediate
    for i in _layers_of(arch, MAMBA):
        w = sd[f"layers.{i}.mixer.in_proj.weight"]  # [z (H·P) | x (H·P) | B | C | dt] x hidden
        x = w[inner : 2 * inner].reshape(hm, p, -1)  # [Hm, P, hidden]
        heads.append(x.pow(2).sum(dim=(1, 2)).sqrt())
        dims.append(x.pow(2).sum(dim=(0, 2)).sqrt())
    out["mamba_heads"] = torch.stack(heads) if heads else torch.zeros(expected_shapes(arch)["mamba_heads"])
    out["mamba_head_dim"] = torch.stack(dims) if dims else torch.zeros(expected_shapes(arch)["mamba_head_dim"])
    out.update(_moe_magnitude(sd, arch))
    out["layers"] = torch.ones(arch.num_layers)
    return {k: v.float().contiguous() for k, v in out.items()}


def _neuron_magnitude(up, down):
    """[F, in] up and [out, F] down -> [F]: L2(up row) x L2(down column)."""
    return up.norm(dim=1) * down.norm(dim=0)


def _moe_magnitude(sd: dict, arch: Architecture) -> dict:
    """The MoE tensors (none without MoE layers); checkpoints hold one up/down tensor per expert."""
    layers = _layers_of(arch, MOE)
    if not layers:
        return {}
    experts, neurons, shared = [], [], []
    for i in layers:
        m = f"layers.{i}.mixer."
        ups = [sd[m + f"experts.{e}.up_proj.weight"] for e in range(arch.n_routed_experts)]
        downs = [sd[m + f"experts.{e}.down_proj.weight"] for e in range(arch.n_routed_experts)]
        experts.append(torch.stack([torch.cat([u.flatten(), d.flatten()]).norm() for u, d in zip(ups, downs, strict=True)]))
        neurons.append(torch.stack([_neuron_magnitude(u, d) for u, d in zip(ups, downs, strict=True)]))
        shared.append(_neuron_magnitude(sd[m + "shared_experts.up_proj.weight"], sd[m + "shared_experts.down_proj.weight"]))
    return {"experts": torch.stack(experts), "moe_ffn": torch.stack(neurons), "shared_expert_ffn": torch.stack(shared)}


def random_scores(arch: Architecture, seed: int = 0) -> dict:
    """Seeded uniform [0, 1) scores of the `Scores` shapes: a random ranking of every axis."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=g) for name, shape in sorted(expected_shapes(arch).items())}


def save_scores(tensors: dict, out_dir, *, model_dir, metric: str = "kl"):
    """Write `scores.safetensors` with the model's fingerprint (what `prune --scores` checks)."""
    from pathlib import Path

    from minitron.importance.scores import Scores
    from minitron.io import model_fingerprint
    from minitron.models.checkpoint import open_checkpoint

    scores = Scores(tensors=tensors, metric=metric, fingerprint=model_fingerprint(model_dir))
    scores.validate(open_checkpoint(model_dir).arch)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return scores.save(out_dir)
