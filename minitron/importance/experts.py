"""Routed-expert importance: pure functions from one MoE layer's routed tokens to per-expert sums and scores.

Nothing here touches a model; `hooks.py` hands these functions what transformers' `NemotronHExperts`
(or `GraniteMoeHybridExperts`, gated: a = act(gate x) · up x) receives (its input, the router's top-k indices and weights) and its own weights. Per MoE layer, with
T_e the tokens routed to expert e (e among the token's top-k), g_{t,e} the router weight the model
applies to e's output for token t (after `norm_topk_prob` and `routed_scaling_factor`), a_{t,e} the
activation entering e's down projection and y_{t,e} = down_e(a_{t,e}) e's output, N all tokens:

    reap         S_e = (1 / |T_e|) Σ_{t∈T_e} g_{t,e} · ‖y_{t,e}‖₂     router-weighted output norm
                                                                     (REAP, arXiv 2510.13999)
    frequency    S_e = |T_e| / N                                     share of tokens routed to e
    output_norm  S_e = (1 / |T_e|) Σ_{t∈T_e} ‖y_{t,e}‖₂              output norm alone
    moe_ffn      S_{e,n} = (1 / |T_e|) Σ_{t∈T_e} |a_{t,e,n}|          each expert's neurons

An expert no token was routed to scores 0 on every metric. The statistics are float64 sums (and
counts), so micro-batches and torchrun ranks add up exactly before the division.

Two ways to the same sums: `expert_sums` recomputes every routed expert from the module's input (the
readable reference, usable as a plain forward hook), and `experts_forward_with_sums` is the experts'
forward itself that keeps the statistics of the activations and outputs it computes anyway (the
scoring path: no expert is run twice). Both are tested against a token-by-token loop.
"""

from __future__ import annotations

EXPERT_METRICS = ("reap", "frequency", "output_norm")
_ALIASES = {"output-norm": "output_norm", "norm": "output_norm", "freq": "frequency"}


def norm_metric(name: str) -> str | None:
    """A metric name as the user may spell it -> its canonical name (None: unknown)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in EXPERT_METRICS else None


def expert_sums(x, top_k_index, top_k_weights, up, down, act, gated: bool = False) -> dict:
    """One MoE layer's routed tokens -> float64 sums per expert.

    x [N, d] expert input (hidden, or the latent of a latent MoE); top_k_index, top_k_weights [N, K];
    up [E, f, d], down [E, d, f] (transformers' fused layout; `gated`: up is [E, gate (f) | up (f), d]). Returns `routed` [E] (|T_e|),
    `gate_norm` [E] (Σ g‖y‖), `norm` [E] (Σ ‖y‖), `act` [E, f] (Σ |a|).
    """
    import torch

    n_exp, f = up.shape[0], up.shape[1] // (2 if gated else 1)
    out = _zero_sums(n_exp, f)
    for e in torch.unique(top_k_index).tolist():
        tok, pos = torch.where(top_k_index == e)
        if gated:
            gate, lin = torch.nn.functional.linear(x[tok], up[e]).chunk(2, dim=-1)
            a = act(gate) * lin  # [n, f]
        else:
            a = act(torch.nn.functional.linear(x[tok], up[e]))  # [n, f]
        y = torch.nn.functional.linear(a, down[e]).float().norm(dim=-1)  # [n]
        g = top_k_weights[tok, pos].float()
        out["routed"][e] = tok.numel()
        out["gate_norm"][e] = (g * y).double().sum()
        out["norm"][e] = y.double().sum()
        out["act"][e] = a.float().abs().double().sum(dim=0)
    return out


def _zero_sums(n_exp: int, f: int) -> dict:
    import torch

    return {"routed": torch.zeros(n_exp, dtype=torch.float64), "gate_norm": torch.zeros(n_exp, dtype=torch.float64),
            "norm": torch.zeros(n_exp, dtype=torch.float64), "act": torch.zeros(n_exp, f, dtype=torch.float64)}


def experts_forward_with_sums(x, top_k_index, top_k_weights, up, down, act, gated: bool = False):
    """The routed experts' forward and `expert_sums` of the same tokens in one pass -> (out [N, d], sums).

    The output is transformers' eager experts loop, op for op (bit-identical to it): for each expert
    e that received tokens, in expert order, with its tokens in the order (top-k slot, token),
    a = act(up_e x) (gated: act(gate_e x) · up_e x), y = down_e a, out[t] += g_{t,e} · y, accumulated
    in the dtype of the router weights and returned in x's. The statistics read the same a and y.
    """
    import torch

    n_exp, f = up.shape[0], up.shape[1] // (2 if gated else 1)
    sums = _zero_sums(n_exp, f)
    out = torch.zeros_like(x, dtype=top_k_weights.dtype)
    mask = torch.nn.functional.one_hot(top_k_index, num_classes=n_exp + 1).permute(2, 1, 0)  # [E+1, K, N]
    hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().squeeze(-1).tolist()
    for e in hit:
        if e == n_exp:  # transformers' sentinel for an expert on another rank
            continue
        pos, tok = torch.where(mask[e])
        if gated:
            gate, lin = torch.nn.functional.linear(x[tok], up[e]).chunk(2, dim=-1)
            a = act(gate) * lin  # [n, f]
        else:
            a = act(torch.nn.functional.linear(x[tok], up[e]))  # [n, f]
        y = torch.nn.functional.linear(a, down[e])  # [n, d]
        g = top_k_weights[tok, pos]  # [n]
        out.index_add_(0, tok, (y * g[:, None]).to(out.dtype))
        y_norm = y.float().norm(dim=-1)
        sums["routed"][e] = tok.numel()
        sums["gate_norm"][e] = (g.float() * y_norm).double().sum()
        sums["norm"][e] = y_norm.double().sum()
        sums["act"][e] = a.float().abs().double().sum(dim=0)
    return out.to(x.dtype), sums


def expert_scores(sums: dict, n_tokens: float, metric: str):
    """Per-expert sums (all batches, all ranks) and the token count -> [E] float64 scores of `metric`."""
    routed = sums["routed"].clamp_min(1.0)
    if metric == "reap":
        return sums["gate_norm"] / routed
    if metric == "frequency":
        return sums["routed"] / max(n_tokens, 1.0)
    if metric == "output_norm":
        return sums["norm"] / routed
    raise ValueError(metric)


def expert_neuron_scores(sums: dict):
    """-> [E, f] float64: the mean |activation| entering each expert's down projection over its tokens."""
    return sums["act"] / sums["routed"].clamp_min(1.0)[:, None]
