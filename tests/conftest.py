"""Shared fixtures: tiny random Nemotron-H checkpoints written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A script of this repository (`benchmarks/x.py`, `scripts/x.py`: not a package) imported by its path."""
    import importlib.util

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The reference configs of ../shared/reference (identical copies ship in minitron/assets/configs).
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
if not REFERENCE.is_dir():
    REFERENCE = Path(__file__).resolve().parents[1] / "minitron" / "assets" / "configs"
REF_12B = REFERENCE / "nemotron-nano-12b-v2-base"
REF_9B = REFERENCE / "nemotron-nano-9b-v2"

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hybrid models mix Mamba layers with attention layers. "
    "Pruning removes the parts of a model that matter least, and distillation teaches the smaller model "
    "to imitate the larger one. Numbers such as 1 2 3 10 100 appear in text too; so do commas, colons and "
    "question marks? "
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The default tiny hybrid (M, -, *, E layers; GQA; 2 Mamba groups), sharded safetensors + tokenizer.

    Read-only: tests that modify a model copy it first (see `tiny_model_copy`).
    """
    from minitron.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "model_copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """A plain-text calibration file, long enough for a few dozen 32-token blocks of the tiny tokenizer."""
    p = tmp_path_factory.mktemp("data") / "calib.txt"
    p.write_text(SAMPLE_TEXT * 40)
    return p


@pytest.fixture(scope="session")
def random_scores_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Seeded random scores of the right shapes for the tiny model (a valid `--scores` directory)."""
    import torch

    from minitron.importance.scores import Scores, expected_shapes
    from minitron.io import model_fingerprint
    from minitron.models.architecture import Architecture

    arch = Architecture.from_path(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    path = tmp_path_factory.mktemp("random-scores")
    Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()},
           fingerprint=model_fingerprint(tiny_model_dir)).save(path)  # fmt: skip
    return path
