"""Width scores on transformers' own tiny Nemotron-H: a naive reference per axis, and known answers."""

from __future__ import annotations

import math

import pytest
import torch
from importance_helpers import attention_output, block_io, naive_aggregate

from minitron.importance.aggregate import Aggregation
from minitron.importance.engine import InMemorySource
from minitron.models.architecture import Architecture
from minitron.models.layer_types import ATTENTION, MAMBA, MLP
from minitron.recipes.score import score_tensors
from minitron.testing import build_model, tiny_config

ARCH = Architecture.from_config(tiny_config())


def tokens(n=4, t=16, seed=0):
    return torch.randint(3, 384, (n, t), generator=torch.Generator().manual_seed(seed))


def score(model, toks, metric="cosine", agg=Aggregation(), **kw):
    out, _, _ = score_tensors(InMemorySource(model), ARCH, toks, agg=agg, batch_size=3, layer_metric=metric, **kw)
    return out


X_SIGNALS = {"mamba_heads": "x_out", "mamba_head_dim": "x"}  # the x-slice signals (the defaults before 0.2)


@pytest.mark.parametrize("agg", [Aggregation("mean", "l2"), Aggregation("l2", "mean")], ids=str)
def test_every_width_score_equals_a_naive_reference(agg):
    """The x-slice Mamba signals here; the gated defaults against theirs in test_importance_signals.py."""
    model = build_model()
    toks = tokens()
    got = score(model, toks, agg=agg, width_metrics=X_SIGNALS)
    seen = block_io(model, toks)
    a = ARCH
    layers = model.model.layers
    with torch.no_grad():
        final = model.model.norm_f(seen[a.num_layers - 1][1])
        hidden = naive_aggregate(final.abs(), agg)
        ffn, att, mh, md = [], [], [], []
        for i, c in enumerate(a.pattern):
            blk = layers[i]
            n = blk.norm(seen[i][0])
            hidden += naive_aggregate(n.abs(), agg)
            if c == MLP:
                ffn.append(naive_aggregate(blk.mixer.act_fn(blk.mixer.up_proj(n)).abs(), agg))
            elif c == ATTENTION:
                att.append(naive_aggregate(attention_output(blk.mixer, n, a).norm(dim=-1), agg))
            elif c == MAMBA:
                inner, heads, p = a.mamba_intermediate, a.mamba_num_heads, a.mamba_head_dim
                x = blk.mixer.in_proj(n)[..., inner : 2 * inner]
                w = blk.mixer.out_proj.weight * blk.mixer.norm.weight[None, :]
                out_norm = [w[:, h * p : (h + 1) * p].norm() for h in range(heads)]
                head_x = naive_aggregate(x.reshape(*x.shape[:2], heads, p).norm(dim=-1), agg)
                mh.append(torch.stack([head_x[h] * out_norm[h] for h in range(heads)]))
                ch = naive_aggregate(x.abs(), agg)
                md.append(torch.tensor([math.sqrt(sum(float(ch[h * p + j]) ** 2 for h in range(heads)))
                                        for j in range(p)]))
    ref = {"hidden": hidden, "ffn": torch.stack(ffn), "attention_heads": torch.stack(att),
           "mamba_heads": torch.stack(mh), "mamba_head_dim": torch.stack(md)}
    ref["kv_heads"] = torch.stack([r.view(a.num_key_value_heads, -1).sum(-1) for r in ref["attention_heads"]])
    for name, r in ref.items():
        assert got[name].shape == r.shape, name
        assert torch.allclose(got[name].double(), r.double(), atol=1e-5, rtol=1e-5), name


# ---------------------------------------------------------------------- known answers
def test_zeroed_ffn_neuron_scores_zero_and_ranks_last():
    model = build_model()
    with torch.no_grad():
        model.model.layers[ARCH.layers_of(MLP)[1]].mixer.up_proj.weight[17].zero_()
    got = score(model, tokens())["ffn"]
    assert float(got[1, 17]) == 0.0
    assert int(got[1].argmin()) == 17 and float(got[1].sort().values[1]) > 0
    assert float(got[0].min()) > 0  # the other MLP layer is untouched


def test_attention_kv_head_with_zeroed_values_ranks_last():
    model = build_model()
    a = ARCH
    layer = a.layers_of(ATTENTION)[0]
    with torch.no_grad():
        model.model.layers[layer].mixer.v_proj.weight[a.head_dim : 2 * a.head_dim].zero_()  # KV head 1
    got = score(model, tokens())
    heads = got["attention_heads"][0]
    group = a.num_attention_heads // a.num_key_value_heads
    assert torch.all(heads[group : 2 * group] == 0) and torch.all(heads[:group] > 0)
    assert int(got["kv_heads"][0].argmin()) == 1 and float(got["kv_heads"][0, 1]) == 0.0


def test_mamba_head_with_zeroed_out_proj_columns_ranks_last_in_the_second_group():
    """A head of the second group, second Mamba layer: with its out_proj columns zero it adds nothing."""
    model = build_model()
    a = ARCH
    p, per_group = a.mamba_head_dim, a.mamba_num_heads // a.n_groups
    head = per_group + 2  # third head of group 1
    with torch.no_grad():
        model.model.layers[a.layers_of(MAMBA)[1]].mixer.out_proj.weight[:, head * p : (head + 1) * p].zero_()
    got = score(model, tokens())["mamba_heads"][1]
    group = got[per_group : 2 * per_group]
    assert float(got[head]) == 0.0 and int(group.argmin()) == 2 and float(group.sort().values[1]) > 0


def test_mamba_head_with_zeroed_x_projection_ranks_last_in_its_group():
    model = build_model()
    a = ARCH
    inner, p = a.mamba_intermediate, a.mamba_head_dim
    with torch.no_grad():
        model.model.layers[a.layers_of(MAMBA)[0]].mixer.in_proj.weight[inner + 1 * p : inner + 2 * p].zero_()
    got = score(model, tokens(), width_metrics=X_SIGNALS)["mamba_heads"][0]
    assert float(got[1]) == 0.0 and int(got[: a.mamba_num_heads // a.n_groups].argmin()) == 1


def test_mamba_head_with_zeroed_out_proj_columns_ranks_last_in_its_group():
    """The default `gated_out`: what the head adds after out_proj."""
    model = build_model()
    a = ARCH
    p = a.mamba_head_dim
    with torch.no_grad():
        model.model.layers[a.layers_of(MAMBA)[0]].mixer.out_proj.weight[:, 1 * p : 2 * p].zero_()
    got = score(model, tokens())["mamba_heads"][0]
    assert float(got[1]) == 0.0 and int(got[: a.mamba_num_heads // a.n_groups].argmin()) == 1
    assert (got[: a.mamba_num_heads // a.n_groups] > 0).sum() == a.mamba_num_heads // a.n_groups - 1


def test_mamba_head_dim_channel_zeroed_in_every_head_ranks_last():
    model = build_model()
    a = ARCH
    inner, p = a.mamba_intermediate, a.mamba_head_dim
    rows = [inner + h * p + 5 for h in range(a.mamba_num_heads)]  # channel 5 of every head's x
    with torch.no_grad():
        model.model.layers[a.layers_of(MAMBA)[2]].mixer.in_proj.weight[rows] = 0
    got = score(model, tokens(), width_metrics=X_SIGNALS)["mamba_head_dim"][2]
    assert float(got[5]) == 0.0 and int(got.argmin()) == 5 and float(got.sort().values[1]) > 0


def test_mamba_head_dim_channel_with_zeroed_gated_norm_weight_ranks_last():
    """The default `gated`: channel 5 of every head leaves the gated norm as zero."""
    model = build_model()
    a = ARCH
    p = a.mamba_head_dim
    with torch.no_grad():
        model.model.layers[a.layers_of(MAMBA)[2]].mixer.norm.weight[[h * p + 5 for h in range(a.mamba_num_heads)]] = 0
    got = score(model, tokens())["mamba_head_dim"][2]
    assert float(got[5]) == 0.0 and int(got.argmin()) == 5 and float(got.sort().values[1]) > 0


def test_hidden_channel_zeroed_in_every_norm_ranks_last():
    model = build_model()
    with torch.no_grad():
        for blk in model.model.layers:
            blk.norm.weight[9] = 0
        model.model.norm_f.weight[9] = 0
    got = score(model, tokens())["hidden"]
    assert float(got[9]) == 0.0 and int(got.argmin()) == 9 and float(got.sort().values[1]) > 0


OUTPUT_WEIGHTS = {  # the weight(s) producing each mixer's output
    MAMBA: ["out_proj.weight"],
    MLP: ["down_proj.weight"],
    ATTENTION: ["o_proj.weight"],
    "E": ["experts.down_proj", "shared_experts.down_proj.weight"],
}


@pytest.mark.parametrize("layer", [2, 3, 4, 6], ids=lambda i: f"layer{i}-{tiny_config()['hybrid_override_pattern'][i]}")
def test_block_with_mixer_output_scaled_to_zero_gets_the_lowest_layer_score(layer):
    model = build_model()
    params = dict(model.model.layers[layer].mixer.named_parameters())
    with torch.no_grad():
        for name in OUTPUT_WEIGHTS[ARCH.pattern[layer]]:
            params[name].mul_(1e-6)
    got = score(model, tokens(n=3), metric="kl")
    # (Not `layers_loss`: on a random model skipping a block often *lowers* the loss, which clamps to 0.)
    for name in ("layers", "layers_mse", "layers_cosine"):
        t = got[name]
        assert int(t.argmin()) == layer, (name, t)
    assert float(got["layers"][layer]) < 1e-3 * float(got["layers"].sort().values[1])


def test_importance_png_has_a_log_layer_panel_and_every_axis(tiny_model_dir, tmp_path):
    import torch

    from minitron.importance.plot import plot_importance
    from minitron.importance.scores import expected_shapes
    from minitron.models.architecture import Architecture

    arch = Architecture.from_path(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()}
    tensors["layers"][2] = 1e3  # one dominant layer must not flatten the others (log scale)
    titles = plot_importance(tensors, arch.pattern, "kl", tmp_path / "importance.png")
    assert "log scale" in titles[0]
    for axis in ("hidden channels", "FFN neurons", "attention heads", "KV heads", "Mamba heads", "Mamba head-dim"):
        assert any(t.startswith(axis) for t in titles[1:]), (axis, titles)
    assert (tmp_path / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importance_png_draws_the_expert_panels_of_a_moe_model(tiny_model_dir, tmp_path):
    import torch

    from minitron.importance.plot import plot_importance
    from minitron.importance.scores import expected_shapes
    from minitron.models.architecture import Architecture

    arch = Architecture.from_path(tiny_model_dir)
    assert arch.moe_layers()
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()}
    titles = plot_importance(tensors, arch.pattern, "kl", tmp_path / "a.png", expert_metric="frequency")
    assert any(t.startswith("routed experts per MoE layer (frequency;") for t in titles), titles
    assert any(t.startswith("routed-expert neurons") for t in titles) and any(t.startswith("shared-expert") for t in titles)
    # The panel draws the expert scores: other scores, another picture; no expert scores, no expert panels.
    tensors["experts"] = tensors["experts"].flip(-1)
    plot_importance(tensors, arch.pattern, "kl", tmp_path / "b.png", expert_metric="frequency")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    dense = {k: v for k, v in tensors.items() if k not in ("experts", "moe_ffn", "shared_expert_ffn")}
    fewer = plot_importance(dense, arch.pattern, "kl", tmp_path / "c.png")
    assert len(fewer) == len(titles) - 3 and not any("expert" in t for t in fewer)
