"""The zero-shot proxy: the same loss/KL figures as `minitron eval`, per candidate pruned in memory."""

from __future__ import annotations

import math

import torch

from minitron.losses.nll import nll_sum_reference
from minitron.models.architecture import Architecture
from minitron.prune.search import Candidate
from minitron.recipes.candidates import proxy_scores
from minitron.testing import build_model, tiny_config


def _cand(a: Architecture, **kw) -> Candidate:
    shape = dict(num_layers=a.num_layers, hidden_size=a.hidden_size, ffn_size=a.intermediate_size,
                 mamba_heads=a.mamba_num_heads, mamba_head_dim=a.mamba_head_dim,
                 attention_heads=a.num_attention_heads, kv_heads=a.num_key_value_heads)
    shape.update(kw)
    return Candidate(**shape, params=0, memory_bytes=0, fits=True)


def test_proxy_keep_all_is_zero_kl_and_the_direct_loss():
    cfg = tiny_config()
    a = Architecture.from_config(cfg)
    model = build_model(cfg)
    blocks = torch.randint(3, 380, (3, 24), generator=torch.Generator().manual_seed(0))
    figs = proxy_scores(model, a, [_cand(a), _cand(a, hidden_size=48, ffn_size=64)], None, blocks, batch_size=2)
    with torch.no_grad():
        nll, n = nll_sum_reference(model(input_ids=blocks, use_cache=False).logits, blocks)
    assert abs(figs[0]["proxy_kl"]) < 1e-6
    assert math.isclose(figs[0]["proxy_loss"], nll / n, rel_tol=1e-5)
    assert figs[1]["proxy_kl"] > 1e-4  # a real cut moves the distribution
