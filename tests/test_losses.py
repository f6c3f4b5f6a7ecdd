"""Chunked distillation losses against their plain formulas (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from minitron.losses.divergence import (
    KINDS,
    distill_loss,
    kl_divergence,
    lm_loss,
    per_token_divergence,
    plain_divergence,
    topk_distill_loss,
)
from minitron.losses.topk import teacher_bins


def _logits(n=2, length=7, v=50, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(n, length, v, generator=g)).requires_grad_(True)
    t = scale * torch.randn(n, length, v, generator=g)
    return s, t


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("top_k", [None, 5])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_equals_plain(kind, temperature, top_k, chunk):
    s, t = _logits()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False  # padding
    ref = plain_divergence(s, t, mask, kind=kind, temperature=temperature, top_k=top_k)
    (g_ref,) = torch.autograd.grad(ref, s)
    got = distill_loss(s, t, mask, kind=kind, temperature=temperature, top_k=top_k, chunk_size=chunk)
    (g_got,) = torch.autograd.grad(got, s)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-7)
    assert g_got[1, 4:].abs().max() == 0  # padding gets no gradient
    assert ref > 0


def test_formulas_by_hand():
    """The plain formulas themselves, against a direct computation on one token."""
    s = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    t = torch.tensor([[0.5, 0.5, 0.0, -2.0]])
    p, q = t.softmax(-1)[0], s.softmax(-1)[0]
    fkl = float((p * (p / q).log()).sum())
    rkl = float((q * (q / p).log()).sum())
    m = (p + q) / 2
    jsd = float(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    for kind, want in (("forward-kl", fkl), ("reverse-kl", rkl), ("jsd", jsd)):
        assert math.isclose(float(distill_loss(s, t, kind=kind)), want, rel_tol=1e-5)
    assert 0 < jsd < math.log(2)
    # top-k: the teacher's top-2 tokens (ids 0 and 1) and one tail bin for ids 2 and 3
    p3 = torch.stack([p[0], p[1], p[2] + p[3]])
    q3 = torch.stack([q[0], q[1], q[2] + q[3]])
    assert math.isclose(float(distill_loss(s, t, top_k=2)), float((p3 * (p3 / q3).log()).sum()), rel_tol=1e-5)
    # temperature: divergence of the softened distributions, times T^2
    T = 2.0
    pT, qT = (t / T).softmax(-1)[0], (s / T).softmax(-1)[0]
    want = T * T * float((pT * (pT / qT).log()).sum())
    assert math.isclose(float(distill_loss(s, t, temperature=T)), want, rel_tol=1e-5)


def test_identical_logits_give_zero():
    s, _ = _logits()
    for kind in KINDS:
        assert float(distill_loss(s.detach(), s.detach(), kind=kind)) == pytest.approx(0.0, abs=1e-6)


def test_all_masked_batch_is_zero_with_grad():
    s, t = _logits()
    mask = torch.zeros(2, 7)
    for fn in (distill_loss, plain_divergence):
        loss = fn(s, t, mask)
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        (g,) = torch.autograd.grad(loss, s)
        assert g.abs().max() == 0


def test_reductions_and_per_token():
    s, t = _logits()
    mask = torch.ones(2, 7)
    mask[0, 0] = 0
    per = per_token_divergence(s, t, mask, chunk_size=4)
    assert per.shape == (2, 7) and per[0, 0] == 0
    torch.testing.assert_close(distill_loss(s, t, mask, reduction="sum"), per.sum())
    torch.testing.assert_close(distill_loss(s, t, mask), per.sum() / 13)
    torch.testing.assert_close(kl_divergence(s, t, mask, reduction="none"), per)
    # per-token gradients weighted by an arbitrary upstream gradient
    w = torch.rand(2, 7)
    (g1,) = torch.autograd.grad((per_token_divergence(s, t, mask, chunk_size=2) * w).sum(), s)
    (g2,) = torch.autograd.grad((plain_divergence(s, t, mask, reduction="none") * w).sum(), s)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_low_precision_logits_and_no_grad():
    s, t = _logits()
    got = distill_loss(s.detach().bfloat16(), t.bfloat16(), chunk_size=5)
    ref = plain_divergence(s.detach().bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, ref)
    sb = s.detach().bfloat16().requires_grad_(True)
    (g,) = torch.autograd.grad(distill_loss(sb, t.bfloat16()), sb)
    assert g.dtype == torch.bfloat16


def test_lm_loss_matches_cross_entropy():
    s, _ = _logits(v=11)
    ids = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(1))
    want = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(lm_loss(s, ids), want)


def test_bad_arguments():
    s, t = _logits()
    from minitron.errors import InputError

    with pytest.raises(InputError):
        distill_loss(s, t, kind="kl")
    with pytest.raises(ValueError):
        distill_loss(s, t[:, :3])
    with pytest.raises(ValueError):
        distill_loss(s, t, temperature=0)


@pytest.mark.parametrize("kind", KINDS)
def test_reuse_teacher_buffer_gives_the_same_loss_and_gradient(kind):
    s, t = _logits()
    mask = torch.ones(2, 7)
    mask[0, :4] = 0  # a fully masked chunk (chunk_size 3 -> rows 0..2) must get a zero gradient
    ref = plain_divergence(s, t, mask, kind=kind, top_k=4)
    (g_ref,) = torch.autograd.grad(ref, s)
    t_buf = t.clone()
    got = distill_loss(s, t_buf, mask, kind=kind, top_k=4, chunk_size=3, reuse_teacher=True)
    (g_got,) = torch.autograd.grad(got, s)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-7)
    assert g_got.data_ptr() == t_buf.data_ptr()  # the teacher's memory now holds the gradient
    # without a gradient to compute, the teacher logits are left alone
    t_buf = t.clone()
    distill_loss(s.detach(), t_buf, reuse_teacher=True)
    assert torch.equal(t_buf, t)


# ---------------------------------------------------------------------- -inf teacher logits, top-k with a tail bin
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_k", [None, 5, 45])
def test_teacher_minus_inf_logits_give_no_nan(kind, top_k):
    """A teacher with -inf logits (masked vocabulary, padding ids): 0 * log 0 = 0, in both paths."""
    s, t = _logits()
    t[..., 40:] = float("-inf")  # 10 of 50 tokens impossible for the teacher
    ref = plain_divergence(s, t, kind=kind, top_k=top_k)
    if kind == "reverse-kl" and top_k != 5:  # student mass where the teacher has none: KL(q || p) = inf, not NaN
        got = distill_loss(s, t.clone(), kind=kind, top_k=top_k, chunk_size=3)
        assert float(ref.detach()) == float(got.detach()) == float("inf")
        return
    (g_ref,) = torch.autograd.grad(ref, s)
    got = distill_loss(s, t.clone(), kind=kind, top_k=top_k, chunk_size=3, reuse_teacher=True)
    (g_got,) = torch.autograd.grad(got, s)
    assert torch.isfinite(ref) and torch.isfinite(got) and ref > 0
    assert torch.isfinite(g_ref).all() and torch.isfinite(g_got).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-7)
    if kind == "forward-kl" and top_k is None:  # equals the KL over the teacher's 40 live tokens
        p = t[..., :40].log_softmax(-1)
        log_q = s.detach().log_softmax(-1)[..., :40]
        want = (p.exp() * (p - log_q)).sum(-1).mean()
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_top_k_penalises_student_mass_outside_the_teacher_top_k():
    """The old renormalised top-k saw no difference between these students; the tail bin does."""
    t = torch.tensor([[4.0, 3.0, 2.0, 0.0, 0.0, 0.0]])
    good = t.clone()  # the teacher itself
    leaky = t.clone()
    leaky[0, 3:] = 5.0  # same ratios on the top-3, but most of its mass off them
    for s in (good, leaky):  # renormalised over the top-3 they are identical to the teacher
        p3, q3 = t[0, :3].softmax(-1), s[0, :3].softmax(-1)
        assert float((p3 * (p3 / q3).log()).sum()) == pytest.approx(0.0, abs=1e-7)
    assert float(distill_loss(good, t, top_k=3)) == pytest.approx(0.0, abs=1e-6)
    leak = float(distill_loss(leaky, t, top_k=3))
    p, q = t.softmax(-1)[0], leaky.softmax(-1)[0]
    p4 = torch.stack([*p[:3], p[3:].sum()])
    q4 = torch.stack([*q[:3], q[3:].sum()])
    assert leak == pytest.approx(float((p4 * (p4 / q4).log()).sum()), rel=1e-5) and leak > 1.0
    # and its gradient pushes the off-top-k logits down
    x = leaky.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(distill_loss(x, t, top_k=3), x)
    assert (g[0, 3:] > 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cached_bins_equal_online_top_k(kind, temperature):
    s, t = _logits()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False
    ref = distill_loss(s, t, mask, kind=kind, temperature=temperature, top_k=6)
    (g_ref,) = torch.autograd.grad(ref, s)
    ids, log_p = teacher_bins(t.reshape(-1, 50), temperature, 6)
    got = topk_distill_loss(s, ids.reshape(2, 7, 6).int(), log_p.reshape(2, 7, 7), mask, kind=kind,
                            temperature=temperature, chunk_size=4)  # fmt: skip
    (g_got,) = torch.autograd.grad(got, s)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_reaches_the_full_divergence_as_k_grows(kind):
    s, t = _logits(v=30)
    full = float(plain_divergence(s, t, kind=kind))
    values = [float(distill_loss(s, t, kind=kind, top_k=k)) for k in (1, 4, 16, 29, 30)]
    if kind == "forward-kl":  # data processing: coarsening never increases a KL
        assert all(v <= full + 1e-6 for v in values)
    assert values[-2] == pytest.approx(full, rel=1e-5) and values[-1] == pytest.approx(full, rel=1e-5)
    ids, log_p = teacher_bins(t.reshape(-1, 30), 1.0, 30)  # k = V: no tail column
    assert log_p.shape[-1] == 30
    cached = float(topk_distill_loss(s, ids.reshape(2, 7, 30), log_p.reshape(2, 7, 30), kind=kind))
    assert cached == pytest.approx(full, rel=1e-5)
