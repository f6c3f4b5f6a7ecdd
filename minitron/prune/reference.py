"""A plain, module-by-module reference of applying a `PrunePlan`, for tests of the fast path.

One function per family layout (Nemotron-H; the dense Llama-like families).

It does not use `tensor_indices` or the segment tables: each module's kept slices are taken with
explicit reshapes of the layouts (`[z | x | B | C | dt]`, `[heads, head_dim]`, ...) written out
here, and copied into a fresh transformers model built from the pruned config.
"""

from __future__ import annotations

from minitron.models.layers import ATTENTION, MAMBA, MLP, MOE
from minitron.prune.plan import PrunePlan


def _put(param, value):
    assert param.shape == value.shape, (param.shape, value.shape)
    param.data.copy_(value)


def reference_prune(model, plan: PrunePlan):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    new = AutoModelForCausalLM.from_config(AutoConfig.for_model(**plan.target().to_config()),
                                           dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        if plan.source.family == "nemotron_h":
            _nemotron_h(model, new, plan)
        else:
            _dense(model, new, plan)
    return new.eval()


def _heads(w, n: int, d: int, keep, dim: int = 0):
    """Rows (dim 0) or columns (dim 1) of the kept heads of a head-major [n · d] dimension."""
    import torch

    keep = torch.tensor(keep)
    if dim == 0:
        return w.reshape(n, d, *w.shape[1:])[keep].reshape(-1, *w.shape[1:])
    return w.reshape(w.shape[0], n, d)[:, keep].reshape(w.shape[0], -1)


def _dense(model, new, plan: PrunePlan):
    """Llama / Mistral / Qwen2 / Qwen3 decoder layers, module by module."""
    import torch

    a = plan.source
    hid = torch.tensor(plan.hidden)
    src, dst = model.model, new.model
    _put(dst.embed_tokens.weight, src.embed_tokens.weight[:, hid])
    _put(dst.norm.weight, src.norm.weight[hid])
    if not a.tie_word_embeddings:
        _put(new.lm_head.weight, model.lm_head.weight[:, hid])
    nq, nkv, hd = a.num_attention_heads, a.num_key_value_heads, a.head_dim
    for j, i in enumerate(plan.kept_layers()):
        s, d = src.layers[i], dst.layers[j]
        _put(d.input_layernorm.weight, s.input_layernorm.weight[hid])
        _put(d.post_attention_layernorm.weight, s.post_attention_layernorm.weight[hid])
        sa, da = s.self_attn, d.self_attn
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
        f = torch.tensor(plan.ffn[i])
        sm, dm = s.mlp, d.mlp
        _put(dm.gate_proj.weight, sm.gate_proj.weight[f][:, hid])
        _put(dm.up_proj.weight, sm.up_proj.weight[f][:, hid])
        _put(dm.down_proj.weight, sm.down_proj.weight[hid][:, f])
        if sm.down_proj.bias is not None:
            _put(dm.gate_proj.bias, sm.gate_proj.bias[f])
            _put(dm.up_proj.bias, sm.up_proj.bias[f])
            _put(dm.down_proj.bias, sm.down_proj.bias[hid])


def _nemotron_h(model, new, plan: PrunePlan):
    import torch

    a = plan.source
    hid = torch.tensor(plan.hidden)
    src, dst = model.model, new.model
    put = _put
    put(dst.embeddings.weight, src.embeddings.weight[:, hid])
    put(dst.norm_f.weight, src.norm_f.weight[hid])
    put(new.lm_head.weight, model.lm_head.weight[:, hid])
    for j, i in enumerate(plan.kept_layers()):
        s, d, kind = src.layers[i], dst.layers[j], a.pattern[i]
        put(d.norm.weight, s.norm.weight[hid])
        sm, dm = s.mixer, d.mixer
        if kind == MAMBA:
            H, P, GN = a.mamba_num_heads, a.mamba_head_dim, a.n_groups * a.ssm_state_size
            heads, dims = torch.tensor(plan.mamba_heads[i]), torch.tensor(plan.mamba_dims[i])

            def inner(w, H=H, P=P, heads=heads, dims=dims):  # [H*P, ...] -> kept heads/channels, flat
                w = w.reshape(H, P, *w.shape[1:])[heads][:, dims]
                return w.reshape(-1, *w.shape[2:])

            w = sm.in_proj.weight
            z, x, b, c, dt = w[:H * P], w[H * P:2 * H * P], w[2 * H * P:2 * H * P + GN], \
                w[2 * H * P + GN:2 * H * P + 2 * GN], w[2 * H * P + 2 * GN:]
            put(dm.in_proj.weight, torch.cat([inner(z), inner(x), b, c, dt[heads]])[:, hid])
            cw = sm.conv1d.weight
            put(dm.conv1d.weight, torch.cat([inner(cw[:H * P]), cw[H * P:]]))
            if sm.conv1d.bias is not None:
                cb = sm.conv1d.bias
                put(dm.conv1d.bias, torch.cat([inner(cb[:H * P]), cb[H * P:]]))
            for name in ("A_log", "D", "dt_bias"):
                put(getattr(dm, name), getattr(sm, name)[heads])
            put(dm.norm.weight, inner(sm.norm.weight))
            ow = sm.out_proj.weight  # [hidden, H*P]
            ow = ow.reshape(-1, H, P)[:, heads][:, :, dims].reshape(ow.shape[0], -1)
            put(dm.out_proj.weight, ow[hid])
        elif kind == ATTENTION:
            nq, nkv, hd = a.num_attention_heads, a.num_key_value_heads, a.head_dim
            qh, kvh = torch.tensor(plan.q_heads[i]), torch.tensor(plan.kv_heads[i])
            put(dm.q_proj.weight, sm.q_proj.weight.reshape(nq, hd, -1)[qh].reshape(-1, a.hidden_size)[:, hid])
            put(dm.k_proj.weight, sm.k_proj.weight.reshape(nkv, hd, -1)[kvh].reshape(-1, a.hidden_size)[:, hid])
            put(dm.v_proj.weight, sm.v_proj.weight.reshape(nkv, hd, -1)[kvh].reshape(-1, a.hidden_size)[:, hid])
            ow = sm.o_proj.weight.reshape(a.hidden_size, nq, hd)[:, qh].reshape(a.hidden_size, -1)
            put(dm.o_proj.weight, ow[hid])
        elif kind == MLP:
            f = torch.tensor(plan.ffn[i])
            put(dm.up_proj.weight, sm.up_proj.weight[f][:, hid])
            put(dm.down_proj.weight, sm.down_proj.weight[hid][:, f])
        elif kind == MOE:
            put(dm.experts.up_proj, sm.experts.up_proj[:, :, hid])
            put(dm.experts.down_proj, sm.experts.down_proj[:, hid])
            put(dm.gate.weight, sm.gate.weight[:, hid])
            dm.gate.e_score_correction_bias.copy_(sm.gate.e_score_correction_bias)
            put(dm.shared_experts.up_proj.weight, sm.shared_experts.up_proj.weight[:, hid])
            put(dm.shared_experts.down_proj.weight, sm.shared_experts.down_proj.weight[hid])
