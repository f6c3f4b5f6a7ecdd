"""`prune --compensation` (`minitron.prune.compensation`): the output projections whose input is cut are
refitted by least squares on the input statistics `minitron score --compensation` records.

Checked against references that do not use the compensation code: the statistics against each
projection's input captured by hand (in memory and layer-streamed); the refit against
`torch.linalg.lstsq` on the captured inputs; the refitted model's per-layer reconstruction error
against the plain cut's; the streamed output against the in-memory one.
"""

from __future__ import annotations

import json

import family_helpers as fam
import pytest
import torch
from prune_helpers import score_dir

from minitron.models.tensors import model_specs
from minitron.prune.apply import prune_model, prune_state_dict
from minitron.prune.compensation import Compensation, collect, gram_bytes, resolve, writers
from minitron.prune.select import Shape, make_plan
from minitron.testing import tiny_config, tiny_dense_config, tiny_falcon_h1_config, tiny_hybrid_config

CONFIGS = {
    "nemotron_h": tiny_config(),
    "llama": tiny_dense_config("llama"),
    "bamba": tiny_hybrid_config("bamba"),
    "granitemoehybrid": tiny_hybrid_config("granitemoehybrid", tie_word_embeddings=False),
    "falcon_h1": tiny_falcon_h1_config(),
}
# more tokens than any kept width, so that the Gram matrices are full rank (the lstsq reference is unique)
TOKENS = torch.randint(3, 384, (8, 32), generator=torch.Generator().manual_seed(5))


def _score(source, arch, grams=True):
    from minitron.importance.aggregate import Aggregation
    from minitron.recipes.score import score_tensors

    t, _, _ = score_tensors(source, arch, TOKENS, agg=Aggregation(), batch_size=2, layer_metric="kl",
                            grams=grams)
    return t


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            from minitron.importance.engine import InMemorySource

            path, model, arch, scores = fam.tiny_family(tmp_path_factory, name, CONFIGS[name])
            built[name] = (path, model, arch, scores, _score(InMemorySource(model), arch))
        return built[name]

    return get


def _module(model, name: str):
    """The module holding canonical tensor `name` (`layers.3.mixer.out_proj.weight`)."""
    path = name.rsplit(".", 1)[0]
    for prefix in ("model.", "backbone.", ""):
        try:
            return model.get_submodule(prefix + path)
        except AttributeError:
            continue
    raise AssertionError(name)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_statistics_are_the_mean_gram_matrix_of_each_projection_input(tiny, family):
    _, model, arch, _, t = tiny(family)
    names = writers(arch)
    kinds = {stat.split(".")[1] for stat in names.values()}
    assert "ffn" in kinds or "shared_ffn" in kinds
    assert set(names.values()) == {k for k in t if k.startswith("gram.")}
    for name, stat in names.items():
        x = fam.captured_input(model, _module(model, name), TOKENS).double()
        x = x.reshape(-1, x.shape[-1])
        torch.testing.assert_close(t[stat].double(), x.T @ x / x.shape[0], rtol=1e-4, atol=1e-6)
    assert sum(v.numel() * 4 for k, v in t.items() if k.startswith("gram.")) == gram_bytes(arch)


def test_layer_streamed_statistics_equal_in_memory(tiny):
    from minitron.models.block_stream import StreamingSource

    path, _, arch, _, t = tiny("nemotron_h")
    streamed = _score(StreamingSource(path), arch)
    for k in (k for k in t if k.startswith("gram.")):
        torch.testing.assert_close(streamed[k], t[k], rtol=1e-4, atol=1e-6)


def test_no_statistics_unless_asked(tiny):
    from minitron.importance.engine import InMemorySource

    _, model, arch, _, _ = tiny("nemotron_h")
    assert not any(k.startswith("gram.") for k in _score(InMemorySource(model), arch, grams=False))


@pytest.mark.parametrize("family", ["nemotron_h", "llama", "falcon_h1"])
def test_refit_is_the_least_squares_solution(tiny, family):
    """Each refitted projection equals lstsq(X_K, X W^T) on the captured inputs (ridge 0)."""
    _, model, arch, scores, t = tiny(family)
    shape = Shape(ffn_size=arch.intermediate_size // 2, mamba_heads=arch.mamba_num_heads // 2 or None,
                  attention_heads=arch.num_attention_heads // 2)
    plan = make_plan(arch, shape, scores, compensation=Compensation(arch, t, ridge=0.0))
    sd = prune_state_dict(model.state_dict(), plan)
    specs = model_specs(arch)
    refitted = plan.compensation.refitted(plan)
    assert refitted
    for name in refitted:
        from minitron.prune.plan import tensor_indices

        keep = list(tensor_indices(specs[name], plan)[1])
        x = fam.captured_input(model, _module(model, name), TOKENS).double().reshape(-1, len(t[writers(arch)[name]]))
        w = dict(model.named_parameters())[_key(model, name)].detach().double()
        want = torch.linalg.lstsq(x[:, keep], x @ w.T).solution.T
        got = sd[_key(model, _renamed(name, plan))].double()
        # the statistics are stored in float32: the fit is optimal to 1e-3 of the output's norm (the weights
        # themselves may differ where o_proj's inputs are ill-conditioned, the fit not)
        residual = {k: float((x @ w.T - x[:, keep] @ v.T).norm()) for k, v in (("got", got), ("want", want))}
        assert residual["got"] - residual["want"] <= 1e-3 * float((x @ w.T).norm()), (name, residual)
        plain = float((x @ w.T - x[:, keep] @ w[:, keep].T).norm())
        assert residual["got"] < plain, (name, residual, plain)


def _key(model, name):
    keys = [k for k in model.state_dict() if k == name or k.endswith("." + name) and k.count(".") == name.count(".") + 1]
    assert len(keys) == 1, (name, keys)
    return keys[0]


def _renamed(name, plan):
    from minitron.prune.apply import kept_name

    return kept_name(name, model_specs(plan.source)[name], plan)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_refit_lowers_every_projection_error(tiny, family):
    """On the calibration tokens, ||W x - W' x_K|| of the refit (ridge default) is below the plain cut's."""
    _, model, arch, scores, t = tiny(family)
    shape = Shape(ffn_size=arch.intermediate_size // 2, attention_heads=arch.num_attention_heads // 2,
                  **({"mamba_head_dim": arch.mamba_head_dim // 2} if arch.mamba_layers() else {}),
                  **({"shared_expert_ffn_size": arch.moe_shared_expert_intermediate_size // 2} if arch.moe_layers() else {}))
    plain = make_plan(arch, shape, scores)
    comp = make_plan(arch, shape, scores, compensation=Compensation(arch, t))
    sd_plain, sd_comp = prune_state_dict(model.state_dict(), plain), prune_state_dict(model.state_dict(), comp)
    specs = model_specs(arch)
    from minitron.prune.plan import tensor_indices

    for name in comp.compensation.refitted(comp):
        keep = list(tensor_indices(specs[name], comp)[1])
        x = fam.captured_input(model, _module(model, name), TOKENS).double()
        x = x.reshape(-1, x.shape[-1])
        w = dict(model.named_parameters())[_key(model, name)].detach().double()
        new = _key(model, _renamed(name, comp))
        err = {k: float((x @ w.T - x[:, keep] @ sd[new].double().T).norm()) for k, sd in
               (("plain", sd_plain), ("comp", sd_comp))}
        assert err["comp"] < err["plain"], (name, err)


def test_every_kept_channel_means_no_change(tiny):
    _, model, arch, scores, t = tiny("nemotron_h")
    plan = make_plan(arch, Shape(hidden_size=arch.hidden_size // 2), scores, compensation=Compensation(arch, t))
    assert plan.compensation.refitted(plan) == []
    ref = prune_state_dict(model.state_dict(), make_plan(arch, Shape(hidden_size=arch.hidden_size // 2), scores))
    got = prune_state_dict(model.state_dict(), plan)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("family", ["nemotron_h", "granitemoehybrid"])
def test_streamed_compensated_cut_equals_the_in_memory_cut(tiny, family, tmp_path):
    from prune_helpers import load_streamed

    from minitron.models.checkpoint import open_checkpoint
    from minitron.prune.rotation import from_covariance
    from minitron.prune.shard_writer import prune_checkpoint

    path, model, arch, scores, t = tiny(family)
    (tmp_path / "s").mkdir()
    from minitron.importance.scores import Scores

    Scores(tensors={**scores.tensors, **{k: v for k, v in t.items() if k.startswith("gram.")}}).save(tmp_path / "s")
    loaded = Scores.load(tmp_path / "s")
    assert loaded.grams_file is not None and not any(k.startswith("gram.") for k in loaded.tensors)
    comp, why = resolve("auto", arch, loaded)
    assert why == "on"
    shape = Shape(hidden_size=arch.hidden_size // 2, ffn_size=arch.intermediate_size // 2,
                  attention_heads=arch.num_attention_heads // 2)
    plan = make_plan(arch, shape, loaded, rotation=from_covariance(arch, t["hidden_covariance"]), compensation=comp)
    assert plan.compensation.refitted(plan)
    out = tmp_path / "out"
    out.mkdir()
    prune_checkpoint(open_checkpoint(path), plan, out, max_shard_bytes=10**5)
    load_streamed(out, model, plan)  # equal to prune_state_dict of the same plan
    assert prune_model(model, plan) is not None


def test_auto_collects_only_small_statistics():
    from minitron.models.architecture import Architecture
    from minitron.models.checkpoint import open_checkpoint
    from minitron.testing import tiny_config

    small = Architecture.from_config(tiny_config())
    assert collect("auto", small)[0] and collect("on", small)[0] and not collect("off", small)[0]
    big = open_checkpoint("nemotron-nano-12b-v2-base").arch
    on, why = collect("auto", big)
    assert not on and "over auto's 1.00 GiB; --compensation on" in why
    assert gram_bytes(big) > 40 * 2**30


def test_cli_score_and_prune(tiny_model_dir, text_file, tmp_path):
    from typer.testing import CliRunner

    from minitron.cli.main import app
    from minitron.models.checkpoint import load_model

    scores = score_dir(tmp_path / "scores", tiny_model_dir, text_file)
    assert (scores / "compensation.safetensors").is_file()
    prov = json.loads((scores / "minitron.json").read_text())
    assert prov["result"]["compensation"].startswith("on (") and "compensation.safetensors" in prov["result"]["files"]
    out = tmp_path / "pruned"
    r = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--ffn-size", "32",
                                 "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["compensation"]["chosen"] == "on" and doc["compensation"]["tensors"] > 0
    load_model(out)  # loads with stock transformers
    text = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--ffn-size", "32",
                                    "--dry-run"])
    assert text.exit_code == 0 and "output projections refitted to their kept inputs" in text.stdout
    off = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--ffn-size", "32",
                                   "--compensation", "off", "--dry-run", "--json"])
    assert json.loads(off.stdout)["compensation"] == "off (asked)"


def test_cli_bad_input(tiny_model_dir, text_file, random_scores_dir, tmp_path):
    from prune_helpers import assert_refused
    from typer.testing import CliRunner

    from minitron.cli.main import app

    run = CliRunner().invoke
    out = tmp_path / "pruned"
    base = ["prune", str(tiny_model_dir), "--scores", str(random_scores_dir), "--ffn-size", "32", "--out", str(out)]
    assert_refused(run(app, [*base, "--compensation", "maybe"]), "--compensation", "expected one of auto, on, off", out)
    assert_refused(run(app, [*base, "--compensation", "on"]), "--compensation", "no compensation statistics", out)
    auto = run(app, [*base[:-2], "--dry-run", "--json"])
    assert json.loads(auto.stdout)["compensation"] == "off (the scores have no compensation statistics)"
    s_out = tmp_path / "s"
    r = run(app, ["score", str(tiny_model_dir), "--data", str(text_file), "--samples", "4", "--seq-len", "32",
                  "--out", str(s_out), "--compensation", "yes"])
    assert r.exit_code == 2 and "--compensation" in r.output and not s_out.exists()
    off = score_dir(tmp_path / "off", tiny_model_dir, text_file, ["--compensation", "off"])
    assert not (off / "compensation.safetensors").exists()
