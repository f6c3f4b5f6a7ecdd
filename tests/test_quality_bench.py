"""The baseline scores of benchmarks/quality.py: weight magnitude (by its definition) and seeded random."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from minitron.importance.scores import Scores
from minitron.models.checkpoint import open_checkpoint

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_scores.py"


@pytest.fixture(scope="module")
def qs():
    spec = importlib.util.spec_from_file_location("quality_scores", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _layers(arch, char):
    return [i for i, c in enumerate(arch.pattern) if c == char]


def test_magnitude_scores_follow_their_definitions(qs, tiny_model_dir):
    arch = open_checkpoint(tiny_model_dir).arch
    sd = qs.load_state_dict(tiny_model_dir)
    mlp, attn, mamba = _layers(arch, "-")[0], _layers(arch, "*")[0], _layers(arch, "M")[1]
    # Make one unit of each axis stand out (or vanish), then check the ranking sees it.
    sd["embeddings.weight"][:, 5] *= 100
    sd[f"layers.{mlp}.mixer.up_proj.weight"][3] = 0
    d, p, inner = arch.head_dim, arch.mamba_head_dim, arch.mamba_intermediate
    sd[f"layers.{attn}.mixer.q_proj.weight"][2 * d : 3 * d] *= 100
    sd[f"layers.{attn}.mixer.v_proj.weight"][d : 2 * d] *= 100
    sd[f"layers.{mamba}.mixer.in_proj.weight"][inner + 4 * p : inner + 5 * p] *= 100
    sd[f"layers.{mamba}.mixer.in_proj.weight"][inner + 1 : 2 * inner : p] *= 100  # channel 1 of every head
    moe = _layers(arch, "E")[0]
    sd[f"layers.{moe}.mixer.experts.2.down_proj.weight"] *= 100  # expert 2 stands out
    sd[f"layers.{moe}.mixer.experts.1.up_proj.weight"][6] = 0  # neuron 6 of expert 1 vanishes
    sd[f"layers.{moe}.mixer.shared_experts.down_proj.weight"][:, 9] *= 100

    t = qs.magnitude_scores(sd, arch)
    Scores(tensors=t).validate(arch)
    assert int(t["hidden"].argmax()) == 5
    assert torch.allclose(t["hidden"], sd["embeddings.weight"].norm(dim=0))
    k = _layers(arch, "-").index(mlp)
    assert float(t["ffn"][k, 3]) == 0.0
    up, down = sd[f"layers.{mlp}.mixer.up_proj.weight"], sd[f"layers.{mlp}.mixer.down_proj.weight"]
    assert torch.allclose(t["ffn"][k, 7], up[7].norm() * down[:, 7].norm())
    a = _layers(arch, "*").index(attn)
    assert int(t["attention_heads"][a].argmax()) == 2 and int(t["kv_heads"][a].argmax()) == 1
    m = _layers(arch, "M").index(mamba)
    assert int(t["mamba_heads"][m].argmax()) == 4
    assert int(t["mamba_head_dim"][m].argmax()) == 1
    assert torch.equal(t["layers"], torch.ones(arch.num_layers))
    assert int(t["experts"][0].argmax()) == 2 and float(t["moe_ffn"][0, 1, 6]) == 0.0
    assert int(t["shared_expert_ffn"][0].argmax()) == 9


def test_random_scores_are_seeded_and_prune_accepts_saved_scores(qs, tiny_model_dir, tmp_path):
    from minitron.recipes.prune import PruneOptions, prune
    from minitron.prune.select import Shape

    arch = open_checkpoint(tiny_model_dir).arch
    a, b, c = qs.random_scores(arch, 0), qs.random_scores(arch, 0), qs.random_scores(arch, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["hidden"], c["hidden"])
    qs.save_scores(a, tmp_path / "scores", model_dir=tiny_model_dir)
    doc = prune(PruneOptions(model=tiny_model_dir, scores=tmp_path / "scores", shape=Shape(hidden_size=32),
                             dry_run=True))
    assert doc["plan"]["hidden_size"] == 32
