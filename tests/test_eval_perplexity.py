"""Perplexity and KL of `minitron eval`: the pure maths against references, the loop against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from minitron.evaluate.perplexity import score_blocks
from minitron.losses.nll import kl_sum, nll_sum, nll_sum_reference


def test_nll_sum_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    ids = torch.randint(0, 11, (3, 7), generator=g)
    fast, n = nll_sum(logits, ids)
    ref, n_ref = nll_sum_reference(logits, ids)
    assert n == n_ref == 3 * 6
    assert fast == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("chunk_elements", [1, 11 * 4, 11 * 5, 10**9])
def test_nll_sum_chunking_only_changes_summation_order(chunk_elements):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 9, 11, generator=g) * 2
    ids = torch.randint(0, 11, (2, 9), generator=g)
    got, n = nll_sum(logits, ids, chunk_elements=chunk_elements)
    assert n == 16 and got == pytest.approx(nll_sum_reference(logits, ids)[0], rel=1e-6)
    got_bf16, _ = nll_sum(logits.bfloat16(), ids, chunk_elements=chunk_elements)  # upcast per chunk
    assert got_bf16 == pytest.approx(nll_sum_reference(logits.bfloat16().float(), ids)[0], rel=1e-5)


def test_nll_of_uniform_logits_is_log_vocab():
    logits = torch.zeros(2, 5, 16)
    ids = torch.randint(0, 16, (2, 5))
    total, n = nll_sum(logits, ids)
    assert total / n == pytest.approx(math.log(16), rel=1e-6)


def test_kl_sum_matches_formula_and_is_zero_on_itself():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 6, 9, generator=g), torch.randn(2, 6, 9, generator=g)
    p, logp, logq = t.softmax(-1), t.log_softmax(-1), s.log_softmax(-1)
    expected = (p * (logp - logq)).sum(-1)[:, :-1].sum()  # last position predicts nothing
    assert kl_sum(s, t, chunk_size=4) == pytest.approx(float(expected), rel=1e-5)
    assert kl_sum(t, t) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from minitron.models.checkpoint import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def blocks():
    g = torch.Generator().manual_seed(2)
    return torch.randint(3, 384, (5, 24), generator=g)


def test_score_blocks_equals_direct_computation(tiny, blocks):
    """Each block on its own, every next-token log-probability by hand, averaged over all predicted tokens."""
    got = score_blocks(tiny, blocks, batch_size=2)
    total, n = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            logp = torch.log_softmax(tiny(input_ids=b[None]).logits[0].double(), -1)  # [L, V]
            total -= sum(float(logp[i, b[i + 1]]) for i in range(len(b) - 1))
            n += len(b) - 1
    assert got.tokens == n == 5 * 23 and got.blocks == 5
    assert got.loss == pytest.approx(total / n, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(total / n), rel=1e-5)
    # transformers' own loss (mean over predicted tokens) agrees too
    with torch.no_grad():
        hf = [float(tiny(input_ids=b[None], labels=b[None]).loss) for b in blocks]
    assert got.loss == pytest.approx(sum(hf) / len(hf), rel=1e-5)


def test_batch_size_does_not_change_the_figures(tiny, blocks):
    one = score_blocks(tiny, blocks, batch_size=1)
    three = score_blocks(tiny, blocks, batch_size=3)
    assert one.loss == pytest.approx(three.loss, rel=1e-5)


def test_kl_of_a_model_to_itself_is_zero_and_to_another_is_not(tiny, blocks, tiny_model_dir):
    from minitron.models.checkpoint import load_model
    from minitron.testing import build_model

    twin = load_model(tiny_model_dir)  # same weights, another object: the KL is really computed
    same = score_blocks(tiny, blocks, teacher=twin, batch_size=2)
    assert same.mean_kl == pytest.approx(0.0, abs=1e-6)
    assert score_blocks(tiny, blocks, teacher=tiny).mean_kl == 0.0  # the teacher itself: no second forward
    other = build_model(seed=7)
    diff = score_blocks(other, blocks, teacher=tiny, batch_size=2)
    with torch.no_grad():
        s, t = other(input_ids=blocks).logits, tiny(input_ids=blocks).logits
    p = t.log_softmax(-1)
    ref = (p.exp() * (p - s.log_softmax(-1))).sum(-1)[:, :-1].mean()
    assert diff.mean_kl > 1e-3
    assert diff.mean_kl == pytest.approx(float(ref), rel=1e-4)


def _by_hand(student, teacher, blocks, masks):
    """Loss over the target tokens and KL(teacher || student) over the positions predicting one, by hand."""
    nll = kl = 0.0
    n = 0
    with torch.no_grad():
        for b, m in zip(blocks, masks, strict=True):
            q = torch.log_softmax(student(input_ids=b[None]).logits[0].double(), -1)
            p = torch.log_softmax(teacher(input_ids=b[None]).logits[0].double(), -1)
            for i in range(len(b) - 1):
                if m[i + 1]:
                    nll -= float(q[i, b[i + 1]])
                    kl += float((p[i].exp() * (p[i] - q[i])).sum())
                    n += 1
    return nll / n, kl / n, n


def test_masked_blocks_and_a_teacher_source_against_a_by_hand_reference(tiny, blocks):
    """Distillation's validation (chat masks, a teacher behind `output()`) is the same loop as eval's."""
    from minitron.distill.teacher import ResidentTeacher, evaluate
    from minitron.testing import build_model

    other = build_model(seed=7)
    masks = torch.zeros_like(blocks, dtype=torch.bool)
    masks[:, 10:] = True  # the answer: the last 14 tokens of each block
    masks[1, 3:6] = True
    loss, kl, n = _by_hand(other, tiny, blocks, masks)
    got = score_blocks(other, blocks, teacher=ResidentTeacher(tiny), masks=masks, batch_size=2)
    assert got.tokens == got.kl_tokens == n == 5 * 14 + 3
    assert got.loss == pytest.approx(loss, rel=1e-5) and got.mean_kl == pytest.approx(kl, rel=1e-5)
    ev = evaluate(tiny, other, blocks, micro_batch_size=3, masks=masks)
    assert (ev["loss"], ev["kl"], ev["tokens"]) == pytest.approx((loss, kl, n), rel=1e-5)
    # without masks: every predicted position, as `minitron eval --teacher` counts them
    ev = evaluate(tiny, other, blocks, micro_batch_size=2)
    full = score_blocks(other, blocks, teacher=tiny, batch_size=4)
    assert ev["tokens"] == full.tokens == 5 * 23
    assert ev["kl"] == pytest.approx(full.mean_kl, rel=1e-6) and ev["loss"] == pytest.approx(full.loss, rel=1e-6)
