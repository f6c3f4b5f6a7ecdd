"""Width importance: pure functions from collected activations to per-unit values and scores.

Nothing here touches a model. The hooks (`hooks.py`) hand these functions the tensors they capture;
the tests feed them hand-made tensors. Per-token unit values are non-negative; `aggregate.py` turns
them into one score per unit (mean over the sequence, L2 over the batch by default).

Signals (DESIGN.md):

    hidden           |norm(x)| per channel: the output of each block's pre-norm (and of norm_f),
                     aggregated per layer, then summed over the layers
    ffn              |act(up_proj(x))| per neuron: the activation entering down_proj
    attention heads  ||o_h||_2 per head: the head's slice of the attention output entering o_proj
    kv heads         the sum of the scores of the query heads that share the KV head
    mamba heads      ||x_h||_2 per head of the x-slice of in_proj's output (Minitron-SSM), times the
                     norm of the head's output weights (gated-norm weight x out_proj columns), so a
                     head whose output never reaches the residual stream scores 0
    mamba head dim   |x_{h,p}| per channel, aggregated per (head, channel), then L2 over the heads
"""

from __future__ import annotations

# in_proj output layout: [z (H·P) | x (H·P) | B (G·N) | C (G·N) | dt (H)]


def channel_values(a):
    """[B, T, C] activations -> [B, T, C] per-token channel values |a| (float32)."""
    return a.float().abs()


def head_values(a, n_heads: int):
    """[B, T, H·D] head-major activations -> [B, T, H] per-token L2 norm of each head's slice."""
    b, t, c = a.shape
    return a.float().view(b, t, n_heads, c // n_heads).norm(dim=-1)


def mamba_x_slice(projected, intermediate: int):
    """[B, T, in_proj_dim] in_proj output -> [B, T, H·P] x-slice (head-major channels)."""
    return projected[..., intermediate : 2 * intermediate]


def kv_scores(head_scores, n_kv: int):
    """[..., n_q] query-head scores -> [..., n_kv]: each KV head gets the sum of its query heads.

    Query head q uses KV head q // (n_q / n_kv) (transformers' repeat_kv order).
    """
    *lead, n_q = head_scores.shape
    return head_scores.reshape(*lead, n_kv, n_q // n_kv).sum(dim=-1)


def mamba_output_weight_norms(out_proj_weight, norm_weight, n_heads: int):
    """[hidden, H·P] out_proj weight and [H·P] gated-norm weight -> [H] Frobenius norm per head.

    The gated RMSNorm scales each x channel by `norm_weight` before out_proj, so the effective output
    weight of channel c is `out_proj_weight[:, c] * norm_weight[c]`.
    """
    w = out_proj_weight.float() * norm_weight.float()[None, :]
    hidden, inner = w.shape
    return w.view(hidden, n_heads, inner // n_heads).pow(2).sum(dim=(0, 2)).sqrt()


def mamba_head_scores(x_scores, out_norms):
    """[H] aggregated x-slice head scores x [H] output weight norms -> [H] head scores."""
    return x_scores * out_norms.to(x_scores.dtype)


def mamba_head_dim_scores(channel_scores, n_heads: int):
    """[H·P] aggregated x-slice channel scores -> [P]: L2 over the heads, shared by every head."""
    return channel_scores.view(n_heads, -1).pow(2).sum(dim=0).sqrt()
