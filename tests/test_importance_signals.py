"""Candidate width signals (`signals.py`): the maths against loops, each signal on transformers' own tiny
Nemotron-H against a naive reference, the defaults unchanged, and `--width-metric` on the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from importance_helpers import attention_output, module_io, naive_aggregate
from safetensors import safe_open
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.errors import InputError
from minitron.importance import signals
from minitron.importance.aggregate import Aggregation
from minitron.importance.engine import InMemorySource
from minitron.models.architecture import Architecture
from minitron.models.layer_types import ATTENTION, MAMBA, MLP
from minitron.recipes.score import score_tensors
from minitron.testing import build_model, tiny_config

ARCH = Architecture.from_config(tiny_config())
AGG = Aggregation()


def naive_agg(values, agg=AGG):
    return naive_aggregate(values, agg)


# ---------------------------------------------------------------------- pure maths
def test_combine_layers_matches_loops():
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(6, dtype=torch.float64, generator=g) for _ in range(4)]
    for how, ref in (("sum", lambda c: sum(float(r[c]) for r in rows)),
                     ("l2", lambda c: math.sqrt(sum(float(r[c]) ** 2 for r in rows))),
                     ("max", lambda c: max(float(r[c]) for r in rows))):
        got = signals.combine_layers(rows, how)
        for c in range(6):
            assert abs(float(got[c]) - ref(c)) < 1e-12, how


def test_head_contributions_match_a_loop_and_see_the_weights():
    g = torch.Generator().manual_seed(1)
    n_heads, d, out = 3, 4, 5
    a = torch.randn(2, 3, n_heads * d, generator=g)
    w = torch.randn(out, n_heads * d, generator=g)
    w[:, d:2 * d] = 0  # head 1 never reaches the output
    got = signals.head_contributions(a, w, n_heads)
    for b in range(2):
        for t in range(3):
            for h in range(n_heads):
                y = [sum(float(w[o, h * d + j]) * float(a[b, t, h * d + j]) for j in range(d)) for o in range(out)]
                assert abs(float(got[b, t, h]) - math.sqrt(sum(v * v for v in y))) < 1e-5
    assert torch.all(got[..., 1] == 0) and torch.all(got[..., 0] > 0)


def test_parse_width_metrics():
    assert signals.parse_width_metrics(None) == {}
    assert signals.parse_width_metrics(["ffn=act_down", "mamba_heads=gated,hidden=L2"]) == {
        "ffn": "act_down", "mamba_heads": "gated", "hidden": "l2"}
    assert signals.parse_width_metrics(["attention=act-out"]) == {"attention_heads": "act_out"}
    for bad in (["ffn"], ["ffn=nope"], ["experts=act"], ["ffn=act,ffn=act_down"]):
        with pytest.raises(InputError, match="--width-metric"):
            signals.parse_width_metrics(bad)


def test_every_axis_has_its_default_among_its_names():
    for axis, (default, names) in signals.WIDTH_METRICS.items():
        assert default in names and len(set(names)) == len(names) >= 2, axis


# ---------------------------------------------------------------------- on a real tiny model
def tokens(n=4, t=16, seed=0):
    return torch.randint(3, 384, (n, t), generator=torch.Generator().manual_seed(seed))


def score(model, toks, **kw):
    out, _, _ = score_tensors(InMemorySource(model), ARCH, toks, agg=AGG, batch_size=3, layer_metric="cosine", **kw)
    return out


def capture(model, toks):
    """Each block's (input, output), and each Mamba mixer's gated-norm output (a hook on `mixer.norm`,
    not on out_proj, which the collector reads)."""
    norms = {i: model.model.layers[i].mixer.norm for i, c in enumerate(ARCH.pattern) if c == MAMBA}
    seen, gated = module_io(model, toks, dict(enumerate(model.model.layers)), norms)
    return seen, {i: o for i, (_, o) in gated.items()}


def per_head_output_norm(x, weight, n_heads):
    """[B, T, H, d] head outputs and [out, H·d] weight -> [B, T, H]: ||W[:, h] x_h|| per token, head by head."""
    d = x.shape[-1]
    return torch.stack([(x[:, :, h] @ weight[:, h * d:(h + 1) * d].T).norm(dim=-1) for h in range(n_heads)], dim=-1)


@pytest.fixture(scope="module")
def scored():
    model = build_model()
    toks = tokens()
    return model, toks, score(model, toks, all_metrics=True)


def test_every_candidate_signal_equals_a_naive_reference(scored):
    model, toks, got = scored
    seen, gated = capture(model, toks)
    a = ARCH
    ref = {}
    with torch.no_grad():
        hid = [naive_agg(blk.norm(seen[i][0]).abs()) for i, blk in enumerate(model.model.layers)]
        hid.append(naive_agg(model.model.norm_f(seen[a.num_layers - 1][1]).abs()))
        ref["hidden.l2"] = torch.tensor([math.sqrt(sum(float(h[c]) ** 2 for h in hid)) for c in range(a.hidden_size)])
        ref["hidden.max"] = torch.tensor([max(float(h[c]) for h in hid) for c in range(a.hidden_size)])
        ffn, att, mg, mgo, mgd = [], [], [], [], []
        for i, c in enumerate(a.pattern):
            blk = model.model.layers[i]
            n = blk.norm(seen[i][0])
            if c == MLP:
                act = blk.mixer.act_fn(blk.mixer.up_proj(n))  # [B, T, F]
                col = blk.mixer.down_proj.weight.norm(dim=0)  # [F]
                ffn.append(naive_agg(act.abs() * col))
            elif c == ATTENTION:
                o = attention_output(blk.mixer, n, a)
                att.append(naive_agg(per_head_output_norm(o, blk.mixer.o_proj.weight, a.num_attention_heads)))
            elif c == MAMBA:
                heads, p = a.mamba_num_heads, a.mamba_head_dim
                y = gated[i].reshape(*gated[i].shape[:2], heads, p)  # [B, T, H, P]
                mg.append(naive_agg(y.norm(dim=-1)))
                mgo.append(naive_agg(per_head_output_norm(y, blk.mixer.out_proj.weight, heads)))
                ch = naive_agg(gated[i].abs())
                mgd.append(torch.tensor([math.sqrt(sum(float(ch[h * p + j]) ** 2 for h in range(heads)))
                                         for j in range(p)]))
    ref.update({"ffn.act_down": torch.stack(ffn), "attention_heads.act_out": torch.stack(att),
                "mamba_heads.gated": torch.stack(mg), "mamba_heads.gated_out": torch.stack(mgo),
                "mamba_head_dim.gated": torch.stack(mgd)})
    ref["kv_heads.act_out"] = torch.stack([r.view(a.num_key_value_heads, -1).sum(-1) for r in ref["attention_heads.act_out"]])
    for name, r in ref.items():
        t = got[f"candidate.{name}"]
        assert t.shape == r.shape, name
        assert torch.allclose(t.double(), r.double(), atol=1e-5, rtol=1e-4), name


def test_the_defaults_are_the_chosen_tensors_and_their_candidates(scored):
    model, toks, got = scored
    plain = score(model, toks)
    assert not any(k.startswith("candidate.") for k in plain)
    for axis, name in signals.defaults().items():
        assert torch.equal(plain[axis], got[f"candidate.{axis}.{name}"]), axis
        assert torch.equal(plain[axis], got[axis]), axis
    assert torch.equal(plain["kv_heads"], got["kv_heads"])
    # the paper's Mamba-head signal differs from the default only by each head's output-weight norm
    assert not torch.allclose(got["candidate.mamba_heads.x"], got["candidate.mamba_heads.x_out"])


@pytest.mark.parametrize("axis,name", [("ffn", "act_down"), ("attention_heads", "act_out"), ("hidden", "max"),
                                       ("mamba_heads", "x_out"), ("mamba_head_dim", "x")])
def test_a_chosen_signal_replaces_its_axis_only(scored, axis, name):
    model, toks, got = scored
    one = score(model, toks, width_metrics={axis: name})
    assert torch.allclose(one[axis], got[f"candidate.{axis}.{name}"])
    assert not torch.allclose(one[axis], got[axis])
    for other in signals.WIDTH_METRICS:
        if other != axis:
            assert torch.equal(one[other], got[other]), other
    if axis == "attention_heads":
        assert torch.allclose(one["kv_heads"], got["candidate.kv_heads.act_out"])


def test_zeroed_down_proj_column_ranks_last_by_act_down_only():
    """The activation entering down_proj does not see down_proj; act_down does."""
    model = build_model()
    layer = ARCH.layers_of(MLP)[0]
    with torch.no_grad():
        model.model.layers[layer].mixer.down_proj.weight[:, 11].zero_()
    got = score(model, tokens(), all_metrics=True)
    assert float(got["candidate.ffn.act_down"][0, 11]) == 0.0 and float(got["ffn"][0, 11]) > 0


# ---------------------------------------------------------------------- the command line
runner = CliRunner()
ARGS = ["--samples", "4", "--seq-len", "32", "--batch-size", "4", "--device", "cpu"]


def test_cli_records_the_chosen_metric(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "s"
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *ARGS,
                            "--width-metric", "ffn=act_down", "--width-metric", "mamba_heads=gated", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["width_metrics"] == {"ffn": "act_down", "mamba_heads": "gated"}
    with safe_open(str(out / "scores.safetensors"), "pt") as f:
        assert f.metadata()["width_metrics"] == "ffn=act_down,mamba_heads=gated"
    prov = json.loads((out / "minitron.json").read_text())
    assert prov["options"]["width_metrics"] == {"ffn": "act_down", "mamba_heads": "gated"}


def test_cli_default_run_records_no_width_metrics(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "s"
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *ARGS])
    assert r.exit_code == 0, r.output
    with safe_open(str(out / "scores.safetensors"), "pt") as f:
        assert "width_metrics" not in f.metadata()
    assert "width_metrics" not in json.loads((out / "minitron.json").read_text())["options"]


@pytest.mark.parametrize("value", ["ffn=nope", "experts=act", "ffn"])
def test_cli_unknown_metric_is_one_line_exit_2_nothing_written(tiny_model_dir, text_file, tmp_path, value):
    out = tmp_path / "s"
    r = runner.invoke(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *ARGS,
                            "--width-metric", value])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--width-metric" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_help_lists_the_width_metrics():
    r = runner.invoke(app, ["score", "--help"], terminal_width=200)
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "--width-metric" in text and "act_down" in text and "gated_out" in text


def test_layer_streamed_scores_equal_in_memory_for_the_new_signals(tiny_model_dir, text_file):
    """The weight-reading signals read each block's weights while it is materialised (streaming too)."""
    from minitron.recipes.score import ScoreOptions, score_model

    chosen = {"ffn": "act_down", "attention_heads": "act_out", "mamba_heads": "gated_out", "mamba_head_dim": "gated"}
    got = {}
    for streaming in (False, True):
        opts = ScoreOptions(samples=4, seq_len=32, batch_size=4, device="cpu", dtype="fp32", streaming=streaming,
                            layer_metric="cosine", width_metrics=chosen)
        got[streaming] = score_model(tiny_model_dir, [str(text_file)], opts).scores
    for axis in chosen:
        assert float(got[True][axis].sum()) > 0, axis
        assert torch.allclose(got[True][axis], got[False][axis], rtol=1e-4, atol=1e-6), axis
    assert got[True].width_metrics == chosen
