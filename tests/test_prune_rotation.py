"""`prune --hidden-basis pca` (`minitron.prune.rotation`): the residual stream rotated into its principal
basis, the first k components kept, the norms rescaled.

Checked against references that do not use the rotation code: the covariance against the norms' inputs
captured by hand; the full rotation (k = n) against the original logits (the model is invariant to it);
the cut against a hand-rotated copy of the model cut by the plain channel selection, which the other
prune tests check against their emulations.
"""

from __future__ import annotations

import copy
import json

import family_helpers as fam
import pytest
import torch
from prune_helpers import score_dir

from minitron.models.architecture import Architecture
from minitron.prune.apply import prune_model
from minitron.prune.rotation import from_covariance, unsupported
from minitron.prune.select import Shape, make_plan
from minitron.testing import (
    tiny_config,
    tiny_dense_config,
    tiny_falcon_h1_config,
    tiny_hybrid_config,
    tiny_zamba2_config,
)

UNTIED = {"tie_word_embeddings": False}
CONFIGS = {
    "nemotron_h": tiny_config(),
    "llama": tiny_dense_config("llama"),
    "qwen3": tiny_dense_config("qwen3"),
    "qwen2": tiny_dense_config("qwen2", **UNTIED),
    "bamba": tiny_hybrid_config("bamba"),
    "granitemoehybrid": tiny_hybrid_config("granitemoehybrid", **UNTIED),
    "falcon_h1": tiny_falcon_h1_config(),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, model with random norm weights, arch, covariance from the real score pass), once per family."""
    built = {}

    def get(name):
        if name not in built:
            path, model, arch, _ = fam.tiny_family(tmp_path_factory, name, CONFIGS[name])
            g = torch.Generator().manual_seed(3)
            with torch.no_grad():  # norms of weight 1 would make the fold a no-op
                for key in arch.impl.hidden_norm_readers(arch):
                    p = model.get_parameter(_module_key(model, key))
                    p.mul_(0.5 + torch.rand(p.shape, generator=g))
            built[name] = (path, model, arch, _covariance(model, arch))
        return built[name]

    return get


def _module_key(model, canonical: str) -> str:
    keys = [k for k, _ in model.named_parameters() if k.endswith(canonical) and
            (k == canonical or k[: -len(canonical)] in ("model.", "backbone."))]
    assert len(keys) == 1, (canonical, keys)
    return keys[0]


def _covariance(model, arch):
    from minitron.importance.aggregate import Aggregation
    from minitron.importance.engine import InMemorySource
    from minitron.recipes.score import score_tensors

    t, _, _ = score_tensors(InMemorySource(model), arch, fam.SCORE_TOKENS, agg=Aggregation(), batch_size=2,
                            layer_metric="kl")
    return t["hidden_covariance"]


def _norm_modules(model, arch):
    """The modules of the norms on the residual stream, found by their declared weight names."""
    return [model.get_submodule(_module_key(model, key).rsplit(".", 1)[0]) for key in arch.impl.hidden_norm_readers(arch)]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_covariance_is_the_mean_of_normalised_norm_inputs(tiny, family):
    _, model, arch, cov = tiny(family)
    rows = [fam.captured_input(model, m, fam.SCORE_TOKENS).double() for m in _norm_modules(model, arch)]
    u = torch.cat([r / r.pow(2).mean(-1, keepdim=True).sqrt() for r in rows])
    want = u.T @ u / u.shape[0]
    assert cov.shape == (arch.hidden_size, arch.hidden_size)
    torch.testing.assert_close(cov.double(), want, rtol=1e-4, atol=1e-5)


def _full_rotation_plan(arch, cov, scores):
    rot = from_covariance(arch, cov)
    plan = make_plan(arch, Shape(), scores)
    plan.rotation = rot.keep(arch.hidden_size)
    return plan


@pytest.mark.parametrize("family", list(CONFIGS))
def test_full_rotation_keeps_the_logits(tiny, family):
    _, model, arch, cov = tiny(family)
    rotated = prune_model(model, _full_rotation_plan(arch, cov, fam.random_scores(arch)))
    q = from_covariance(arch, cov).basis.float()
    w = rotated.get_parameter(_module_key(rotated, next(iter(arch.impl.hidden_norm_readers(arch)))))
    assert torch.equal(w, torch.ones_like(w))  # folded into the readers (scale 1 at k = n)
    assert not torch.allclose(q.abs(), torch.eye(arch.hidden_size), atol=0.1)  # a real rotation, not a permutation
    torch.testing.assert_close(fam.logits(rotated), fam.logits(model), rtol=1e-4, atol=2e-4)


def _rotate_by_hand(model, arch, q):
    """A copy of `model` in basis q, written per module: norms folded into the linears reading them."""
    m = copy.deepcopy(model)
    readers = arch.impl.hidden_norm_readers(arch)
    params = dict(m.named_parameters())
    with torch.no_grad():
        weights = {c: params[_module_key(m, c)].clone() for c in readers}
        for key, p in params.items():
            name = key.split(".", 1)[1] if key.startswith(("model.", "backbone.")) else key
            if name in readers:
                p.fill_(1.0)
                continue
            h = arch.hidden_size
            folds = [c for c, prefixes in readers.items() if name.startswith(prefixes)]
            out = p.float()
            if folds and p.ndim >= 2 and p.shape[-1] == h:
                out = out * weights[folds[0]]
            for d in range(p.ndim):
                if p.shape[d] == h:
                    out = torch.movedim(torch.movedim(out, d, -1) @ q, -1, d)
            p.copy_(out)
    return m


@pytest.mark.parametrize("family", ["nemotron_h", "llama", "bamba", "falcon_h1"])
def test_pca_cut_equals_the_rotated_model_cut_by_channels(tiny, family):
    _, model, arch, cov = tiny(family)
    k = arch.hidden_size // 2
    rot = from_covariance(arch, cov)
    scores = fam.random_scores(arch)
    plan = make_plan(arch, Shape(hidden_size=k, ffn_size=40), scores, rotation=rot)
    got = prune_model(model, plan)
    # the reference: rotate by hand, keep the first k channels by the plain cut, set the norms to the scale
    ranked = {**scores.tensors, "hidden": torch.arange(arch.hidden_size, 0, -1).float()}
    ref = prune_model(_rotate_by_hand(model, arch, rot.basis.float()), make_plan(arch, Shape(hidden_size=k, ffn_size=40), ranked))
    ev = torch.linalg.eigvalsh(cov.double()).flip(0)
    scale = float((ev[:k].sum() / ev.sum() * arch.hidden_size / k).sqrt())
    with torch.no_grad():
        for mod in _norm_modules(ref, Architecture.from_config(ref.config.to_dict())):
            mod.weight.fill_(scale)
    torch.testing.assert_close(fam.logits(got), fam.logits(ref), rtol=1e-4, atol=1e-4)
    assert plan.rotation.record()["norm_scale"] == pytest.approx(scale, rel=1e-6)


@pytest.mark.parametrize("family", ["nemotron_h", "granitemoehybrid"])
def test_streamed_pca_cut_equals_the_in_memory_cut(tiny, family, tmp_path):
    from minitron.models.checkpoint import open_checkpoint
    from minitron.prune.shard_writer import prune_checkpoint

    path, model, arch, cov = tiny(family)
    model.save_pretrained(tmp_path / "src")  # the random norm weights, on disk
    plan = make_plan(arch, Shape(hidden_size=arch.hidden_size // 2), fam.random_scores(arch),
                     rotation=from_covariance(arch, cov))
    out = tmp_path / "out"
    out.mkdir()
    prune_checkpoint(open_checkpoint(tmp_path / "src"), plan, out, max_shard_bytes=10**5)
    from prune_helpers import load_streamed

    load_streamed(out, model, plan)


def test_refused_where_it_cannot_be_folded():
    tied = Architecture.from_config(tiny_dense_config("qwen2"))
    assert "tied lm_head" in unsupported(tied)
    assert "does not declare" in unsupported(Architecture.from_config(tiny_zamba2_config(**UNTIED)))


def test_cli_auto_picks_pca_and_records_it(tiny_model_dir, text_file, tmp_path):
    from typer.testing import CliRunner

    from minitron.cli.main import app

    scores = score_dir(tmp_path / "scores", tiny_model_dir, text_file)
    out = tmp_path / "pruned"
    r = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--hidden-size", "48",
                                 "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["hidden_basis"]["chosen"] == "pca" and doc["hidden_basis"]["components"] == 48
    assert 0 < doc["hidden_basis"]["kept_variance"] < 1
    prov = json.loads((out / "minitron.json").read_text())
    assert prov["result"]["indices"]["hidden_basis"]["basis"] == "pca"
    same = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--ffn-size", "32",
                                    "--dry-run", "--json"])
    assert json.loads(same.stdout)["hidden_basis"] == "channels (the hidden size is not cut)"
    text = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--hidden-size", "48",
                                    "--dry-run"])
    assert text.exit_code == 0 and "hidden basis: pca, the first 48 of 64 principal components" in text.stdout


def test_cli_bad_basis_and_scores_without_covariance(tiny_model_dir, random_scores_dir, tmp_path):
    from prune_helpers import assert_refused
    from typer.testing import CliRunner

    from minitron.cli.main import app

    out = tmp_path / "pruned"
    run = CliRunner().invoke
    base = ["prune", str(tiny_model_dir), "--scores", str(random_scores_dir), "--hidden-size", "48", "--out", str(out)]
    assert_refused(run(app, [*base, "--hidden-basis", "svd"]), "--hidden-basis", "expected one of auto, pca, channels", out)
    assert_refused(run(app, [*base, "--hidden-basis", "pca"]), "--hidden-basis", "no hidden_covariance", out)
    r = run(app, [*base[:-2], "--dry-run", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["hidden_basis"] == "channels (the scores have no hidden_covariance)"


def test_cli_tied_model_refuses_pca(tmp_path, text_file):
    from prune_helpers import assert_refused
    from typer.testing import CliRunner

    from minitron.cli.main import app
    from minitron.testing import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "m" / "qwen2", tiny_dense_config("qwen2"))
    scores = score_dir(tmp_path / "m" / "scores", model_dir, text_file)
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "pruned"
    r = CliRunner().invoke(app, ["prune", str(model_dir), "--scores", str(scores), "--hidden-size", "32",
                                 "--hidden-basis", "pca", "--out", str(out)])
    assert_refused(r, "--hidden-basis", "tied lm_head", out)
    auto = CliRunner().invoke(app, ["prune", str(model_dir), "--scores", str(scores), "--hidden-size", "32",
                                    "--dry-run", "--json"])
    assert json.loads(auto.stdout)["hidden_basis"].startswith("channels (a tied lm_head")
