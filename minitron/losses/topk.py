"""Top-k distillation with one tail bin: the maths shared by online `--top-k` and cached teacher logits.

Per token, the teacher's support is cut into k + 1 outcomes: its k most likely tokens S (after the
temperature) and one *tail* bin holding everything else. Both distributions are coarsened the
same way,

    p_bins = (p_v for v in S,  p_tail = 1 - sum_S p_v)
    q_bins = (q_v for v in S,  q_tail = 1 - sum_S q_v)

and the divergence is the ordinary one between these two (k + 1)-outcome distributions. So student
mass outside the teacher's top-k is penalised (through q_tail) — unlike renormalising both over S,
where a student could move any mass off S for free — and by the data-processing inequality the
value is a lower bound of the full-vocabulary divergence that reaches it as k -> V (exactly equal at
k >= V - 1: the tail is then a single token or empty). A cache needs only (ids, log p_S, log p_tail)
per token to compute it exactly.

Shapes: `ids` [n, k] (long), `log_p` [n, k + 1] (teacher log-probs of the bins, tail last; -inf
where a bin is empty), student logits [n, V]. `tail=False` when k >= V (no tail bin: k columns).
"""

from __future__ import annotations

import math

import torch


def safe_kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_b a_b (log a_b - log b_b) per row, with 0 * log(0 / x) = 0 (no NaN where a has zeros).

    Zero-probability entries of `a` are replaced by 0 before the product, so neither the value nor
    the gradient (w.r.t. `log_b`, or `log_a` where it is finite) is NaN."""
    live = log_a > float("-inf")
    a = torch.where(live, log_a, torch.zeros_like(log_a))
    b = torch.where(live, log_b, torch.zeros_like(log_b))
    return torch.where(live, a.exp() * (a - b), torch.zeros_like(a)).sum(-1)


def bins_divergence(log_q: torch.Tensor, log_p: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row divergence [n] between two distributions given as log-probabilities [n, K]."""
    if kind == "forward-kl":
        return safe_kl_rows(log_p, log_q)
    if kind == "reverse-kl":
        return safe_kl_rows(log_q, log_p)
    if kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
        return 0.5 * safe_kl_rows(log_p, log_m) + 0.5 * safe_kl_rows(log_q, log_m)
    raise ValueError(kind)


def teacher_bins(teacher: torch.Tensor, temperature: float, k: int):
    """(ids [n, k'], log_p [n, k' + tail]) of teacher logits [n, V]: its top-k' tokens (k' = min(k, V))
    and their log-probs at `temperature`, plus the log tail mass when k' < V. fp32."""
    log_p = torch.log_softmax(teacher.float() / temperature, dim=-1)  # [n, V]
    k = min(k, log_p.shape[-1])
    top, ids = log_p.topk(k, dim=-1)  # [n, k]
    if k >= log_p.shape[-1]:
        return ids, top
    tail = log_p.scatter_(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)  # [n, 1]; log_p overwritten
    return ids, torch.cat([top, tail], dim=-1)


def student_bins(student: torch.Tensor, ids: torch.Tensor, temperature: float, tail: bool) -> torch.Tensor:
    """The student's log-probs of the bins [n, k + tail] (differentiable) from its logits [n, V]."""
    log_q = torch.log_softmax(student.float() / temperature, dim=-1)  # [n, V]
    top = log_q.gather(-1, ids)  # [n, k]
    if not tail:
        return top
    rest = log_q.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)  # [n, 1]: log q_tail
    return torch.cat([top, rest], dim=-1)


def bins_rows(student, ids, log_p, kind: str, temperature: float) -> torch.Tensor:
    """T^2 x the divergence of every row [n] (autograd-friendly reference of the bins loss)."""
    tail = log_p.shape[-1] == ids.shape[-1] + 1
    return bins_divergence(student_bins(student, ids, temperature, tail), log_p, kind) * temperature**2


def forward_kl_bins_fast(student, ids, log_p, temperature: float, mask, need_grad: bool):
    """Forward KL on the bins of [n, V] rows, and its gradient in closed form (the hot path).

    With P = sum of the teacher's bins (1 up to rounding of a cache), the gradient w.r.t. logit j is
    T * (P q_j - p_j [j in S] - p_tail q_j / q_tail [j not in S]); masked rows are 0.
    """
    t = temperature
    k = ids.shape[-1]
    tail = log_p.shape[-1] == k + 1
    log_q = torch.log_softmax(student.float() / t, dim=-1)  # [n, V]
    parts = [log_q.gather(-1, ids)]  # [n, k]
    rest = None
    if tail:
        rest = log_q.scatter(-1, ids, float("-inf"))  # [n, V]: log q_j off S, -inf on S
        lq_tail = rest.logsumexp(-1, keepdim=True)  # [n, 1]
        parts.append(lq_tail)
    rows = safe_kl_rows(log_p, torch.cat(parts, dim=-1)) * (t * t) * mask
    if not need_grad:
        return rows, None
    p = log_p.exp()  # [n, k + tail]; exp(-inf) = 0
    grad = log_q.exp_().mul_(p.sum(-1, keepdim=True))  # P q, in log_q's memory
    if tail:
        grad.sub_(rest.sub_(lq_tail).exp_().mul_(p[:, k:]))  # p_tail q_j / q_tail off S (0 on S)
    grad.scatter_add_(-1, ids, -p[:, :k])
    return rows, grad.mul_((t * mask).unsqueeze(-1))
