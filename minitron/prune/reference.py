"""A plain, module-by-module reference of applying a `PrunePlan`, for tests of the fast path.

One function per family layout (Nemotron-H; the dense Llama-like families; Bamba, Granite 4.0-H and
Falcon-H1),
sharing the per-module pieces (attention, Mamba-2, gated MLP).

It does not use `tensor_indices` or the segment tables: each module's kept slices are taken with
explicit reshapes of the layouts (`[z | x | B | C | dt]`, `[heads, head_dim]`, ...) written out
here, and copied into a fresh transformers model built from the pruned config.
"""

from __future__ import annotations

from minitron.models.layer_types import ATTENTION, MAMBA, MLP, MOE
from minitron.models.tensors import model_specs
from minitron.prune.plan import PrunePlan


def _put(param, value):
    assert param.shape == value.shape, (param.shape, value.shape)
    param.data.copy_(value)


def reference_prune(model, plan: PrunePlan):
    import torch
    from transformers import AutoModelForCausalLM

    from minitron.models.checkpoint import hf_config

    new = AutoModelForCausalLM.from_config(hf_config(plan.target().to_config()),
                                           dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        {"nemotron_h": _nemotron_h, "bamba": _hybrid, "granitemoehybrid": _hybrid, "falcon_h1": _hybrid}.get(
            plan.source.family, _dense)(model, new, plan)
    return new.eval()


def _heads(w, n: int, d: int, keep, dim: int = 0):
    """Rows (dim 0) or columns (dim 1) of the kept heads of a head-major [n · d] dimension."""
    import torch

    keep = torch.tensor(keep)
    if dim == 0:
        return w.reshape(n, d, *w.shape[1:])[keep].reshape(-1, *w.shape[1:])
    return w.reshape(w.shape[0], n, d)[:, keep].reshape(w.shape[0], -1)


def _attention(sa, da, a, plan: PrunePlan, i: int, hid) -> None:
    """q/k/v/o of one attention module (biases and Qwen3's per-head q/k norms included)."""
    nq, nkv, hd = a.num_attention_heads, a.num_key_value_heads, a.head_dim
    qh, kvh = plan.q_heads[i], plan.kv_heads[i]
    _put(da.q_proj.weight, _heads(sa.q_proj.weight, nq, hd, qh)[:, hid])
    _put(da.k_proj.weight, _heads(sa.k_proj.weight, nkv, hd, kvh)[:, hid])
    _put(da.v_proj.weight, _heads(sa.v_proj.weight, nkv, hd, kvh)[:, hid])
    _put(da.o_proj.weight, _heads(sa.o_proj.weight, nq, hd, qh, dim=1)[hid])
    if sa.q_proj.bias is not None:
        _put(da.q_proj.bias, _heads(sa.q_proj.bias, nq, hd, qh))
        _put(da.k_proj.bias, _heads(sa.k_proj.bias, nkv, hd, kvh))
        _put(da.v_proj.bias, _heads(sa.v_proj.bias, nkv, hd, kvh))
    if sa.o_proj.bias is not None:
        _put(da.o_proj.bias, sa.o_proj.bias[hid])
    if hasattr(sa, "q_norm"):  # Qwen3: per-head norms over head_dim, untouched
        _put(da.q_norm.weight, sa.q_norm.weight)
        _put(da.k_norm.weight, sa.k_norm.weight)


def _mamba(sm, dm, a, plan: PrunePlan, i: int, hid) -> None:
    """One Mamba-2 mixer: in_proj [z | x | B | C | dt], conv [x | B | C], per-head scalars, gated norm, out_proj."""
    import torch

    H, P, GN = a.mamba_num_heads, a.mamba_head_dim, a.n_groups * a.ssm_state_size
    heads, dims = torch.tensor(plan.mamba_heads[i]), torch.tensor(plan.mamba_dims[i])

    def inner(w):  # [H*P, ...] -> kept heads/channels, flat
        w = w.reshape(H, P, *w.shape[1:])[heads][:, dims]
        return w.reshape(-1, *w.shape[2:])

    w = sm.in_proj.weight
    z, x, b, c, dt = w[:H * P], w[H * P:2 * H * P], w[2 * H * P:2 * H * P + GN], \
        w[2 * H * P + GN:2 * H * P + 2 * GN], w[2 * H * P + 2 * GN:]
    _put(dm.in_proj.weight, torch.cat([inner(z), inner(x), b, c, dt[heads]])[:, hid])
    cw = sm.conv1d.weight
    _put(dm.conv1d.weight, torch.cat([inner(cw[:H * P]), cw[H * P:]]))
    if sm.conv1d.bias is not None:
        cb = sm.conv1d.bias
        _put(dm.conv1d.bias, torch.cat([inner(cb[:H * P]), cb[H * P:]]))
    for name in ("A_log", "D", "dt_bias"):
        _put(getattr(dm, name), getattr(sm, name)[heads])
    if hasattr(sm.norm, "weight"):  # Falcon-H1 without `mamba_rms_norm`: an Identity
        _put(dm.norm.weight, inner(sm.norm.weight))
    if sm.in_proj.bias is not None:
        b = sm.in_proj.bias
        z, x, bc, dt = b[:H * P], b[H * P:2 * H * P], b[2 * H * P:2 * H * P + 2 * GN], b[2 * H * P + 2 * GN:]
        _put(dm.in_proj.bias, torch.cat([inner(z), inner(x), bc, dt[heads]]))
    if sm.out_proj.bias is not None:
        _put(dm.out_proj.bias, sm.out_proj.bias[hid])
    ow = sm.out_proj.weight  # [hidden, H*P]
    ow = ow.reshape(-1, H, P)[:, heads][:, :, dims].reshape(ow.shape[0], -1)
    _put(dm.out_proj.weight, ow[hid])


def _gated_mlp(sm, dm, f, hid, fused: bool = False) -> None:
    """gate/up rows and down columns of the kept neurons (Granite: `input_linear` = [gate | up])."""
    import torch

    if fused:
        n = sm.output_linear.weight.shape[1]
        _put(dm.input_linear.weight, torch.cat([sm.input_linear.weight[f], sm.input_linear.weight[n + f]])[:, hid])
        _put(dm.output_linear.weight, sm.output_linear.weight[hid][:, f])
        return
    _put(dm.gate_proj.weight, sm.gate_proj.weight[f][:, hid])
    _put(dm.up_proj.weight, sm.up_proj.weight[f][:, hid])
    _put(dm.down_proj.weight, sm.down_proj.weight[hid][:, f])
    if sm.down_proj.bias is not None:
        _put(dm.gate_proj.bias, sm.gate_proj.bias[f])
        _put(dm.up_proj.bias, sm.up_proj.bias[f])
        _put(dm.down_proj.bias, sm.down_proj.bias[hid])


def _embeddings(model, new, a, hid, emb: str, final: str) -> None:
    _put(getattr(new.model, emb).weight, getattr(model.model, emb).weight[:, hid])
    _put(getattr(new.model, final).weight, getattr(model.model, final).weight[hid])
    if "lm_head.weight" in model_specs(a):  # the family stores it (not tied)
        _put(new.lm_head.weight, model.lm_head.weight[:, hid])


def _dense(model, new, plan: PrunePlan):
    """Llama / Mistral / Qwen2 / Qwen3 decoder layers, module by module."""
    import torch

    a, hid = plan.source, torch.tensor(plan.hidden)
    _embeddings(model, new, a, hid, "embed_tokens", "norm")
    for j, i in enumerate(plan.kept_layers()):
        s, d = model.model.layers[i], new.model.layers[j]
        _put(d.input_layernorm.weight, s.input_layernorm.weight[hid])
        _put(d.post_attention_layernorm.weight, s.post_attention_layernorm.weight[hid])
        _attention(s.self_attn, d.self_attn, a, plan, i, hid)
        _gated_mlp(s.mlp, d.mlp, torch.tensor(plan.ffn[i]), hid)


def _hybrid(model, new, plan: PrunePlan):
    """Bamba / Granite 4.0-H: a Mamba-2 or attention mixer plus a gated MLP in every layer (Granite: routed
    experts beside it). Falcon-H1: both mixers side by side, then the MLP, in every layer."""
    import torch

    from minitron.families.base import ATTENTION_C, MAMBA_C

    a, hid = plan.source, torch.tensor(plan.hidden)
    granite = a.family == "granitemoehybrid"
    post, mlp = ("post_attention_layernorm", "shared_mlp") if granite else ("pre_ff_layernorm", "feed_forward")
    _embeddings(model, new, a, hid, "embed_tokens", "norm" if granite else "final_layernorm")
    for j, i in enumerate(plan.kept_layers()):
        s, d = model.model.layers[i], new.model.layers[j]
        _put(d.input_layernorm.weight, s.input_layernorm.weight[hid])
        _put(getattr(d, post).weight, getattr(s, post).weight[hid])
        holds = a.impl.components(a.pattern[i])
        if MAMBA_C in holds:
            _mamba(s.mamba, d.mamba, a, plan, i, hid)
        if ATTENTION_C in holds:
            _attention(s.self_attn, d.self_attn, a, plan, i, hid)
        _gated_mlp(getattr(s, mlp), getattr(d, mlp), torch.tensor(plan.ffn[i]), hid, fused=granite)
        if getattr(s, "block_sparse_moe", None) is not None:  # Granite's routed experts: hidden only
            sm, dm = s.block_sparse_moe, d.block_sparse_moe
            _put(dm.router.weight, sm.router.weight[:, hid])
            _put(dm.experts.gate_up_proj, sm.experts.gate_up_proj[:, :, hid])
            _put(dm.experts.down_proj, sm.experts.down_proj[:, hid])


def _nemotron_h(model, new, plan: PrunePlan):
    import torch

    a, hid = plan.source, torch.tensor(plan.hidden)
    _embeddings(model, new, a, hid, "embeddings", "norm_f")
    put = _put
    for j, i in enumerate(plan.kept_layers()):
        s, d, kind = model.model.layers[i], new.model.layers[j], a.pattern[i]
        put(d.norm.weight, s.norm.weight[hid])
        sm, dm = s.mixer, d.mixer
        if kind == MAMBA:
            _mamba(sm, dm, a, plan, i, hid)
        elif kind == ATTENTION:
            _attention(sm, dm, a, plan, i, hid)
        elif kind == MLP:
            f = torch.tensor(plan.ffn[i])
            put(dm.up_proj.weight, sm.up_proj.weight[f][:, hid])
            put(dm.down_proj.weight, sm.down_proj.weight[hid][:, f])
        elif kind == MOE:
            _moe(sm, dm, a, plan, i, hid)


def _moe(sm, dm, a, plan: PrunePlan, i: int, hid) -> None:
    """Routed experts one by one (kept experts in order, each its own neurons), router rows and correction
    bias of the kept experts, the shared expert's kept neurons; a latent MoE's experts live in the latent space."""
    import torch

    latent = a.moe_latent_size is not None
    up, down = [], []
    for e in plan.experts[i]:
        f = torch.tensor(plan.moe_ffn[i][e])
        u, d = sm.experts.up_proj[e][f], sm.experts.down_proj[e][:, f]  # [f, inner], [inner, f]
        up.append(u if latent else u[:, hid])
        down.append(d if latent else d[hid])
    _put(dm.experts.up_proj, torch.stack(up))
    _put(dm.experts.down_proj, torch.stack(down))
    kept = torch.tensor(plan.experts[i])
    _put(dm.gate.weight, sm.gate.weight[kept][:, hid])
    dm.gate.e_score_correction_bias.copy_(sm.gate.e_score_correction_bias[kept])
    s = torch.tensor(plan.shared_ffn[i])
    _put(dm.shared_experts.up_proj.weight, sm.shared_experts.up_proj.weight[s][:, hid])
    _put(dm.shared_experts.down_proj.weight, sm.shared_experts.down_proj.weight[hid][:, s])
    if sm.shared_experts.up_proj.bias is not None:
        _put(dm.shared_experts.up_proj.bias, sm.shared_experts.up_proj.bias[s])
        _put(dm.shared_experts.down_proj.bias, sm.shared_experts.down_proj.bias[hid])
    if latent:
        _put(dm.fc1_latent_proj.weight, sm.fc1_latent_proj.weight[:, hid])
        _put(dm.fc2_latent_proj.weight, sm.fc2_latent_proj.weight[hid])
        if sm.fc1_latent_proj.bias is not None:
            _put(dm.fc1_latent_proj.bias, sm.fc1_latent_proj.bias)
            _put(dm.fc2_latent_proj.bias, sm.fc2_latent_proj.bias[hid])
