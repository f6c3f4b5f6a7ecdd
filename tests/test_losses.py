"""Chunked distillation losses against their plain formulas (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from minitron.distill.losses import (
    KINDS,
    distill_loss,
    kl_divergence,
    lm_loss,
    per_token_divergence,
    plain_divergence,
)


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
    # top-k: both renormalised over the teacher's top-2 tokens (ids 0 and 1)
    p2, q2 = t[0, :2].softmax(-1), s[0, :2].softmax(-1)
    assert math.isclose(float(distill_loss(s, t, top_k=2)), float((p2 * (p2 / q2).log()).sum()), rel_tol=1e-5)
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
        assert float(loss) == 0.0 and loss.requires_grad
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
