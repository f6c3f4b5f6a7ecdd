"""Every model directory minitron writes has a README.md that parses as a Hugging Face model card."""

from __future__ import annotations

import pytest
from distill_helpers import base_args, make_pruned_student
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def scores_dir(random_scores_dir):
    return random_scores_dir


def _card(path):
    card = ModelCard.load(path / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["base_model_relation"] == "pruned" and "minitron" in meta["tags"]
    return card, meta


def test_pruned_model_card(tiny_model_dir, scores_dir, tmp_path):
    out = tmp_path / "pruned"
    r = runner.invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores_dir), "--hidden-size", "48",
                            "--num-layers", "7", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    card, meta = _card(out)
    assert meta["base_model"] == tiny_model_dir.name  # a local base is named by its directory
    assert "| hidden_size | 64 | 48 |" in card.text and "| num_layers | 9 | 7 |" in card.text
    assert "minitron prune" in card.text or "prune" in card.text
    assert "Memory at " in card.text and "weights/KV bf16" in card.text


def test_distilled_model_card_has_the_measured_figures(tiny_model_dir, text_file, tmp_path):
    student = make_pruned_student(tiny_model_dir, tmp_path / "student")
    out = tmp_path / "distilled"
    r = runner.invoke(app, base_args(tiny_model_dir, student, text_file, out, "--steps", "2"))
    assert r.exit_code == 0, r.output
    card, meta = _card(out)
    assert "distilled" in meta["tags"] and meta["base_model"] == tiny_model_dir.name
    assert "val KL to the teacher" in card.text and "training tokens" in card.text


def test_a_hub_base_model_is_named_by_its_id():
    from minitron.card import base_model_id

    assert base_model_id("nvidia/NVIDIA-Nemotron-Nano-12B-v2-Base@main") == "nvidia/NVIDIA-Nemotron-Nano-12B-v2-Base"
    assert base_model_id("/some/dir", {"_name_or_path": "org/model"}) == "org/model"
