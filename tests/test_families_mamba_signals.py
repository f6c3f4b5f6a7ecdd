"""The gated Mamba signals (`gated`, `gated_out` for heads; `gated` for head dim) on every Mamba family's
own mixer, against a naive reference: out_proj's input captured by a hook of the test's own and
aggregated one unit at a time. (Nemotron-H's are in test_importance_signals.py, from the gated norm.)"""

from __future__ import annotations

import math

import pytest
import torch
from importance_helpers import naive_aggregate

from minitron.importance.aggregate import Aggregation
from minitron.importance.engine import InMemorySource
from minitron.models.architecture import Architecture
from minitron.recipes.score import score_tensors
from minitron.testing import build_model, tiny_falcon_h1_config, tiny_hybrid_config, tiny_zamba2_config

CONFIGS = {
    "bamba": tiny_hybrid_config("bamba"),
    "granitemoehybrid": tiny_hybrid_config("granitemoehybrid"),
    "falcon_h1": tiny_falcon_h1_config(),
    "falcon_h1_no_gated_norm": tiny_falcon_h1_config(mamba_rms_norm=False),
    "zamba2": tiny_zamba2_config(),
}
AGG = Aggregation()
TOKS = torch.randint(3, 384, (3, 12), generator=torch.Generator().manual_seed(4))


def _mixers(model, arch):
    """The Mamba mixer of each Mamba layer, in the order of the score rows."""
    out = []
    for i in arch.mamba_layers():
        found = [m for _, m in model.model.layers[i].named_modules() if hasattr(m, "A_log")]
        assert len(found) == 1, i
        out.append(found[0])
    return out


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gated_signals_equal_a_naive_reference(family):
    model = build_model(CONFIGS[family]).eval()
    arch = Architecture.from_config(model.config.to_dict())
    got, _, _ = score_tensors(InMemorySource(model), arch, TOKS, agg=AGG, batch_size=2, layer_metric="cosine",
                              all_metrics=True)
    seen = {k: [] for k in range(len(arch.mamba_layers()))}
    handles = [m.out_proj.register_forward_pre_hook(lambda _m, inp, k=k: seen[k].append(inp[0].detach()))
               for k, m in enumerate(_mixers(model, arch))]
    with torch.no_grad():
        model(TOKS, use_cache=False)
    for h in handles:
        h.remove()
    hn, p = arch.mamba_num_heads, arch.mamba_head_dim
    heads, contrib, dims = [], [], []
    for k, mixer in enumerate(_mixers(model, arch)):
        y = torch.cat(seen[k]).double()  # [B, T, H·P]
        yh = y.reshape(*y.shape[:2], hn, p)
        heads.append(naive_aggregate(yh.norm(dim=-1), AGG))
        w = mixer.out_proj.weight.detach().double()
        contrib.append(naive_aggregate(torch.stack([(yh[:, :, h] @ w[:, h * p:(h + 1) * p].T).norm(dim=-1)
                                                    for h in range(hn)], dim=-1), AGG))
        ch = naive_aggregate(y.abs(), AGG)
        dims.append(torch.tensor([math.sqrt(sum(float(ch[h * p + j]) ** 2 for h in range(hn))) for j in range(p)],
                                 dtype=torch.float64))
    for name, ref in (("mamba_heads.gated", heads), ("mamba_heads.gated_out", contrib), ("mamba_head_dim.gated", dims)):
        t = got[f"candidate.{name}"].double()
        assert t.shape == (len(ref), len(ref[0])), name
        torch.testing.assert_close(t, torch.stack(ref), rtol=1e-4, atol=1e-6, msg=name)
        assert float(t.min()) > 0, name  # the hook fired on every layer
