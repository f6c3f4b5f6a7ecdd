"""Logit-distillation losses: forward KL, reverse KL and Jensen-Shannon, chunked over tokens.

Notation, per token: teacher logits `t`, student logits `s` (both `[V]`), temperature `T`,
p = softmax(t / T) (teacher), q = softmax(s / T) (student).

    forward-kl   KL(p || q) = sum_v p_v (log p_v - log q_v)         (Minitron, Nemotron Nano 2)
    reverse-kl   KL(q || p) = sum_v q_v (log q_v - log p_v)
    jsd          0.5 KL(p || m) + 0.5 KL(q || m),  m = (p + q) / 2

Each is multiplied by T^2 (Hinton et al.) so that gradient magnitudes do not shrink with T; at the
default T = 1 this changes nothing. With `top_k`, both distributions are coarsened to k + 1 outcomes:
the teacher's k most likely tokens and one tail bin for the rest (`minitron.losses.topk`), the same
definition as the cached teacher logits (`topk_distill_loss`); student mass outside the teacher's
top-k is penalised through the tail bin, and as k -> V the value reaches the full divergence.
Zero teacher probabilities (-inf logits) contribute 0, never NaN (0 * log 0 = 0).

Two implementations of one maths:

- `plain_divergence` / `plain_per_token` — the formulas written out on whole `[N, V]` tensors:
  the readable reference, used in tests.
- `distill_loss` / `per_token_divergence` — the same formulas applied to `chunk_size` tokens at a
  time (default: 16 MiB of fp32 per temporary, 32 tokens at vocabulary 131072) by a custom autograd function that computes the gradient of each chunk *during the forward*
  (one small autograd call per chunk), keeps only that gradient for the backward and saves neither
  the student's nor the teacher's logits. So at most one chunk of fp32 `[chunk, V]` temporaries is
  alive at a time, and the caller may free both logit tensors as soon as the loss is computed.
  With `reuse_teacher=True` the gradient is written over the teacher logits, row block by row
  block after each block is read, so the loss needs no [N, V] memory of its own at all.

Masked tokens (padding, `mask == 0`) contribute nothing; a batch with no valid token gives a loss of
0 that still back-propagates (a zero gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minitron.losses.topk import bins_divergence, bins_rows, forward_kl_bins_fast, teacher_bins

KINDS = ("forward-kl", "reverse-kl", "jsd")
DEFAULT_CHUNK = None  # auto: CHUNK_ELEMENTS // vocab tokens per chunk
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of fp32 per [chunk, V] temporary (32 tokens at vocab 131072)


def auto_chunk(vocab: int, chunk_size: int | None = None) -> int:
    """Tokens per chunk: `chunk_size` if given, else as many as fit CHUNK_ELEMENTS fp32 values."""
    return max(1, int(chunk_size)) if chunk_size else max(1, CHUNK_ELEMENTS // max(1, vocab))


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        from minitron.errors import InputError

        raise InputError(f"unknown loss {kind!r} (expected {', '.join(KINDS)})", flag="--loss")
    return kind


# ------------------------------------------------------------------ the formulas, on [n, V] rows
def _rows(student, teacher, kind, temperature, top_k):
    """T^2 x the divergence of every row [n] of [n, V] logits (top-k: on the k + 1 bins)."""
    if top_k is not None and top_k < teacher.shape[-1]:
        ids, log_p = teacher_bins(teacher.detach(), temperature, top_k)
        return bins_rows(student, ids, log_p, kind, temperature)
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    return bins_divergence(log_q, log_p, kind) * (temperature**2)


def _forward_kl_fast(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float,
                     need_grad: bool):  # fmt: skip
    """Forward KL of [n, V] rows and its gradient in closed form (the trainer's default, so the hot path).

    T^2 KL(p || q) per row, and d/ds = T (q - p) per row (masked rows 0): the same numbers as
    autograd through `_rows` (tested), with a third of the passes over [n, V] and fewer temporaries.
    """
    log_q = F.log_softmax(student.float() / temperature, dim=-1)  # [n, V]
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)  # [n, V]
    p = log_p.exp()
    # log_p now holds log p - log q, with 0 where p = 0 (a -inf teacher logit: 0 * log 0 = 0, not NaN)
    diff = log_p.sub_(log_q).masked_fill_(p == 0, 0.0)
    rows = torch.linalg.vecdot(p, diff) * (temperature**2) * mask
    del log_p, diff
    grad = None
    if need_grad:
        grad = log_q.exp_().sub_(p).mul_((temperature * mask).unsqueeze(-1))  # q - p, in log_q's memory
    return rows, grad


def _flatten(student_logits, teacher_logits, mask):
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}")
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v)
    t = teacher_logits.reshape(-1, v)
    m = torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if mask is None else mask.reshape(-1).bool()
    if m.shape[0] != s.shape[0]:
        raise ValueError(f"mask has {m.shape[0]} tokens, logits have {s.shape[0]}")
    return s, t, m


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    if reduction == "none":
        return per_token.reshape(shape)
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")


# ------------------------------------------------------------------ reference
def plain_per_token(student_logits, teacher_logits, mask=None, *, kind="forward-kl", temperature=1.0, top_k=None):
    """Reference: the divergence of every token, whole tensors at once; masked tokens are 0."""
    check_kind(kind)
    s, t, m = _flatten(student_logits, teacher_logits, mask)
    return (_rows(s, t.detach(), kind, temperature, top_k) * m).reshape(student_logits.shape[:-1])


def plain_divergence(student_logits, teacher_logits, mask=None, *, kind="forward-kl", temperature=1.0, top_k=None,
                     reduction="mean"):  # fmt: skip
    """Reference: the loss on whole tensors (autograd keeps every [N, V] fp32 intermediate)."""
    s, t, m = _flatten(student_logits, teacher_logits, mask)
    per = plain_per_token(s, t, m, kind=kind, temperature=temperature, top_k=top_k)
    return _reduce(per, m, reduction, student_logits.shape[:-1])


# ------------------------------------------------------------------ chunked
class _ChunkedDivergence(torch.autograd.Function):
    """Per-token divergence [N] of [N, V] student logits, `chunk` rows at a time.

    The teacher is either its logits [N, V] (`ids` None) or, for cached teacher logits, the log-probs
    of its bins [N, k + tail] with their token ids `ids` [N, k]. Forward: for each chunk, the formula
    and (when the student needs a gradient) its gradient with respect to the chunk's student logits,
    written into `grad` [N, V] (student dtype). Backward: `grad * grad_output[:, None]` — exact,
    because token n's divergence depends on row n only.
    """

    @staticmethod
    def forward(ctx, student, teacher, ids, mask, kind, temperature, top_k, chunk, reuse_teacher):
        n = student.shape[0]
        out = torch.zeros(n, dtype=torch.float32, device=student.device)
        need_grad = ctx.needs_input_grad[0]
        grad = None
        if need_grad:
            # Row block a:b of the teacher is read before the gradient of a:b is written there.
            reuse = (ids is None and reuse_teacher and teacher.dtype == student.dtype and teacher.is_contiguous())
            grad = teacher if reuse else torch.zeros_like(student)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            m = mask[a:b]
            if not bool(m.any()):
                if grad is not None:
                    grad[a:b] = 0
                continue
            s = student[a:b].detach()
            if ids is not None:  # cached: the teacher's bins are given
                c_ids, c_log_p = ids[a:b], teacher[a:b]
            elif top_k is not None and top_k < teacher.shape[-1]:  # online top-k: the same bins, made here
                c_ids, c_log_p = teacher_bins(teacher[a:b], temperature, top_k)
            else:
                c_ids = c_log_p = None
            if kind == "forward-kl":
                if c_ids is None:
                    rows, g = _forward_kl_fast(s, teacher[a:b], m, temperature, need_grad)
                else:
                    rows, g = forward_kl_bins_fast(s, c_ids, c_log_p, temperature, m, need_grad)
                out[a:b] = rows
                if need_grad:
                    grad[a:b] = g
                continue
            with torch.enable_grad():
                if need_grad:
                    s = s.requires_grad_(True)
                if c_ids is None:
                    rows = _rows(s, teacher[a:b], kind, temperature, None) * m
                else:
                    rows = bins_rows(s, c_ids, c_log_p, kind, temperature) * m
                if need_grad:
                    (g,) = torch.autograd.grad(rows.sum(), s)
                    grad[a:b] = g
            out[a:b] = rows.detach()
        # Kept as an attribute, not with save_for_backward: the backward hands the buffer itself on
        # (scaled in place) and drops its own reference, so autograd can adopt it without a copy.
        ctx.grad = grad
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad = ctx.grad
        if grad is None:  # the buffer was handed on by an earlier backward
            raise RuntimeError("the chunked distillation loss supports one backward pass (no retain_graph)")
        ctx.grad = None
        grad.mul_(grad_out.to(grad.dtype)[:, None])
        return grad, None, None, None, None, None, None, None, None


def per_token_divergence(student_logits, teacher_logits, mask=None, *, kind="forward-kl", temperature=1.0, top_k=None,
                         chunk_size=DEFAULT_CHUNK, reuse_teacher=False):  # fmt: skip
    """The divergence of every token, shape `student_logits.shape[:-1]`, fp32; masked tokens are 0.

    Chunked over tokens; differentiable in `student_logits`; the teacher is never differentiated.
    `reuse_teacher=True` stores the gradient in the teacher logits' own memory (same dtype and
    contiguous only): no [N, V] buffer is allocated, and the teacher logits are *overwritten* —
    for callers that drop them right after the loss, as the trainer does.
    """
    check_kind(kind)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    s, t, m = _flatten(student_logits, teacher_logits, mask)
    chunk = auto_chunk(s.shape[-1], chunk_size)
    per = _ChunkedDivergence.apply(s, t.detach(), None, m, kind, float(temperature), top_k, chunk,
                                   bool(reuse_teacher))  # fmt: skip
    return per.reshape(student_logits.shape[:-1])


def distill_loss(student_logits, teacher_logits, mask=None, *, kind="forward-kl", temperature=1.0, top_k=None,
                 reduction="mean", chunk_size=DEFAULT_CHUNK, reuse_teacher=False):  # fmt: skip
    """The distillation loss (chunked). `reduction`: mean over valid tokens, sum, or none (per token).

    `student_logits`, `teacher_logits`: [..., V] (any float dtype; maths in fp32); `mask`: [...],
    1 for tokens that count. An all-masked batch gives 0 with a (zero) gradient. With
    `reuse_teacher=True` the teacher logits are overwritten by the gradient (see `per_token_divergence`).
    """
    s, t, m = _flatten(student_logits, teacher_logits, mask)
    per = per_token_divergence(s, t, m, kind=kind, temperature=temperature, top_k=top_k, chunk_size=chunk_size,
                               reuse_teacher=reuse_teacher)  # fmt: skip
    return _reduce(per, m, reduction, student_logits.shape[:-1])


def topk_distill_loss(student_logits, ids, log_p, mask=None, *, kind="forward-kl", temperature=1.0,
                      reduction="mean", chunk_size=DEFAULT_CHUNK):  # fmt: skip
    """The loss against cached teacher logits: the top-k + tail-bin divergence, chunked.

    `student_logits` [..., V]; `ids` [..., k] the teacher's top-k token ids; `log_p` [..., k + 1]
    the teacher's log-probs of those tokens and (last) of the tail at `temperature` (or [..., k] when
    k = V: no tail). Equals `distill_loss(..., top_k=k)` on the teacher logits the cache was made from.
    """
    check_kind(kind)
    v, k = student_logits.shape[-1], ids.shape[-1]
    if ids.shape[:-1] != student_logits.shape[:-1] or log_p.shape[:-1] != ids.shape[:-1]:
        raise ValueError(f"student logits {tuple(student_logits.shape)}, teacher ids {tuple(ids.shape)} and "
                         f"log-probs {tuple(log_p.shape)} do not match")  # fmt: skip
    if log_p.shape[-1] not in (k, k + 1) or (log_p.shape[-1] == k and k < v):
        raise ValueError(f"log-probs need k + 1 = {k + 1} columns (top-k and the tail), got {log_p.shape[-1]}")
    s = student_logits.reshape(-1, v)
    m = torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if mask is None else mask.reshape(-1).bool()
    chunk = auto_chunk(v, chunk_size)
    per = _ChunkedDivergence.apply(s, log_p.reshape(s.shape[0], -1).float(), ids.reshape(s.shape[0], k).long(), m,
                                   kind, float(temperature), None, chunk, False)  # fmt: skip
    return _reduce(per, m, reduction, student_logits.shape[:-1])


def kl_divergence(student_logits, teacher_logits, mask=None, temperature=1.0, chunk_size=DEFAULT_CHUNK,
                  reduction="mean"):  # fmt: skip
    """KL(teacher || student) per token (`reduction="none"`) or its mean over valid tokens.

    The figure "KL of a model to the teacher" used by training and evaluation. Stable API.
    """
    return distill_loss(student_logits, teacher_logits, mask, kind="forward-kl", temperature=temperature,
                        reduction=reduction, chunk_size=chunk_size)  # fmt: skip


def lm_loss(logits, input_ids, mask=None, *, reduction="mean"):
    """Next-token cross-entropy of `logits` [B, L, V] on `input_ids` [B, L] (position l predicts l+1)."""
    v = logits.shape[-1]
    pred = logits[:, :-1].reshape(-1, v).float()
    target = input_ids[:, 1:].reshape(-1)
    per = F.cross_entropy(pred, target, reduction="none")
    m = torch.ones_like(per, dtype=torch.bool) if mask is None else mask[:, 1:].reshape(-1).bool()
    per = per * m
    return _reduce(per, m, reduction, input_ids[:, 1:].shape)
