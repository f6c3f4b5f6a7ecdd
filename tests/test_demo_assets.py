"""The bundled demo teacher and corpus: they ship, load with stock transformers, and the teacher has learned."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import minitron
from minitron.cli.main import app

REPO = Path(__file__).resolve().parents[1]
DEMO = Path(minitron.__file__).resolve().parent / "assets" / "demo"
TEACHER = DEMO / "teacher"
MOE_TEACHER = DEMO / "moe-teacher"
CORPUS = DEMO / "corpus"
# The wheel carries the demo: corpus (4.2 MiB), the first teacher (17.4 MiB, fp32) and the MoE teacher
# (4.8 MiB, bf16, sharing the corpus and tokenizer). 28 MiB, not 25, since the MoE teacher: at hidden 128
# its untied embeddings alone take 2 MiB in bf16, and the 16 experts x 3 MoE layers need the rest.
ASSET_BUDGET_MIB = 28


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def teacher():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(TEACHER)


def test_assets_present_licensed_and_small():
    for name in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
                 "training.json"]:
        assert (TEACHER / name).is_file(), name
    for name in ["train.txt", "heldout.txt", "LICENSE"]:
        assert (CORPUS / name).stat().st_size > 0, name
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= ASSET_BUDGET_MIB * 1024 * 1024, f"demo assets are {total / 2**20:.1f} MiB"
    lic = (CORPUS / "LICENSE").read_text()
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in lic
    card = (TEACHER / "README.md").read_text()
    for needle in ["tokens seen", "| steps |", "wall time", "validation loss", "scripts/train_demo_teacher.py"]:
        assert needle in card, needle


def _pattern(path: Path = TEACHER) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).hybrid_override_pattern


def test_teacher_architecture_is_a_real_hybrid():
    cfg = json.loads((TEACHER / "config.json").read_text())
    assert cfg["model_type"] == "nemotron_h"
    pattern = _pattern()
    assert {"M", "-", "*"} <= set(pattern) and "E" not in pattern
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert cfg["n_groups"] > 1 and cfg["mamba_num_heads"] % cfg["n_groups"] == 0


def test_heldout_is_disjoint_from_train():
    train = set((CORPUS / "train.txt").read_text().split("\n\n"))
    heldout = [p for p in (CORPUS / "heldout.txt").read_text().split("\n\n") if p.strip()]
    assert len(heldout) > 500
    # Paragraphs are deduplicated globally, so no held-out paragraph is in the training text.
    assert not [p for p in heldout if p in train]


def test_teacher_passes_minitron_inspect():
    r = CliRunner().invoke(app, ["inspect", str(TEACHER), "--context-length", "1024", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["weights"]["present"] and doc["pattern"] == _pattern()


def test_tokenizer_round_trips(teacher):
    _, tok = teacher
    text = "The dict type maps keys to values; see collections.OrderedDict() and PEP 468.\n\n  Indented: x = {'a': 1}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # BPE merges learned on English
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_teacher_has_learned_heldout_text(teacher):
    import torch

    model, tok = teacher
    ids = tok((CORPUS / "heldout.txt").read_text(), add_special_tokens=False)["input_ids"]
    seq, n = 128, 8
    stride = len(ids) // n
    x = torch.tensor([ids[i * stride:i * stride + seq] for i in range(n)])  # [8, 128], spread over the held-out text
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()
    uniform = math.log(model.config.vocab_size)
    assert loss < 0.65 * uniform, (loss, uniform)
    recorded = json.loads((TEACHER / "training.json").read_text())["val_loss"]
    assert abs(loss - recorded) < 0.6, (loss, recorded)


def test_corpus_cleaner_turns_rest_into_prose():
    build = _script("build_demo_corpus")
    rst = """.. _label:

Title of the page
=================

.. index:: single: thing

The :func:`len` function and :class:`~collections.OrderedDict` return ``3`` for
*emphasised* words, see `the site <https://python.org>`_. For example::

   x = len([1, 2, 3])

>>> print(x)
3

.. function:: spam(a, b)
              spam(a)

   Return the :keyword:`!None` spam.

* a list item that goes on
  over two lines

.. code-block:: python

   not prose at all
"""
    paras = build.rst_to_paragraphs(rst)
    assert paras == [
        "Title of the page",
        "The len function and OrderedDict return 3 for emphasised words, see the site. For example:",
        "Return the None spam.",
        "a list item that goes on over two lines",
    ]


def test_lr_schedule_warms_up_then_decays_to_floor():
    train = _script("train_demo_teacher")
    lrs = [train.lr_at(s, 100, 1.0, 10) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[100] == pytest.approx(0.1)


# ---------------------------------------------------------------- the MoE teacher
def test_moe_teacher_ships_with_the_first_teachers_tokenizer_and_a_card():
    for name in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
                 "training.json"]:
        assert (MOE_TEACHER / name).is_file(), name
    for name in ["tokenizer.json", "tokenizer_config.json"]:  # one vocabulary for both teachers
        assert (MOE_TEACHER / name).read_bytes() == (TEACHER / name).read_bytes(), name
    card = (MOE_TEACHER / "README.md").read_text()
    for needle in ["tokens seen", "| steps |", "wall time", "validation loss", "active parameters",
                   "scripts/train_demo_teacher.py --moe"]:
        assert needle in card, needle


def test_moe_teacher_is_a_hybrid_with_routed_and_shared_experts():
    cfg = json.loads((MOE_TEACHER / "config.json").read_text())
    assert cfg["model_type"] == "nemotron_h"
    assert {"M", "*", "E"} <= set(_pattern(MOE_TEACHER))
    assert cfg["n_routed_experts"] == 16 and cfg["num_experts_per_tok"] == 2
    assert cfg["moe_shared_expert_intermediate_size"] > 0 and cfg["n_shared_experts"] == 1


def test_moe_teacher_loads_with_stock_transformers_has_learned_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MOE_TEACHER, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MOE_TEACHER)
    record = json.loads((MOE_TEACHER / "training.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    ids = tok((CORPUS / "heldout.txt").read_text(), add_special_tokens=False)["input_ids"]
    seq, n = 128, 8
    stride = len(ids) // n
    x = torch.tensor([ids[i * stride:i * stride + seq] for i in range(n)])
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()
    assert loss < 0.65 * math.log(model.config.vocab_size), loss
    assert abs(loss - record["val_loss"]) < 0.6, (loss, record["val_loss"])
    # The balancing kept every expert in use: none gets under a third of its fair share of held-out tokens.
    for layer in record["expert_load"]:
        assert min(layer) > 1 / (3 * len(layer)), layer
    prompt = tok("The list", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == prompt.shape[1] + 12 or int(out[0, -1]) == tok.eos_token_id
    assert tok.decode(out[0, prompt.shape[1]:]).strip()


def test_moe_teacher_passes_minitron_inspect_with_active_parameters():
    r = CliRunner().invoke(app, ["inspect", str(MOE_TEACHER), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    record = json.loads((MOE_TEACHER / "training.json").read_text())
    assert doc["params"]["total"] == record["parameters"]
    assert doc["active_params"]["total"] == record["active_parameters"] < record["parameters"]
