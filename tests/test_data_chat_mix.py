"""Chat rows with assistant-token loss masks, and weighted data mixes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.data import load_dataset, parse_data_specs, render_chat, tokenize_with_masks
from minitron.errors import InputError

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant: {% endif %}")  # fmt: skip
CHATS = [
    [{"role": "user", "content": "What do hybrid models mix?"},
     {"role": "assistant", "content": "Mamba layers with attention layers."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What does pruning remove?"},
     {"role": "assistant", "content": "The parts that matter least."}, {"role": "user", "content": "And then?"},
     {"role": "assistant", "content": "Distillation teaches the smaller model."}],
]  # fmt: skip


@pytest.fixture(scope="module")
def chat_teacher(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny teacher with a chat template on its tokenizer."""
    d = tmp_path_factory.mktemp("chat") / "teacher"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def chat_student(chat_teacher, tmp_path_factory) -> Path:
    d = make_pruned_student(chat_teacher, tmp_path_factory.mktemp("chat") / "student")
    shutil.copy(chat_teacher / "tokenizer_config.json", d / "tokenizer_config.json")
    return d


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("chatdata") / "chat.jsonl"
    p.write_text("".join(json.dumps({"messages": CHATS[i % 2]}) + "\n" for i in range(60)))
    return p


def _tok(path):
    from minitron.models.checkpoint import load_tokenizer

    return load_tokenizer(path)


def test_render_chat_masks_assistant_turns_only(chat_teacher):
    tok = _tok(chat_teacher)
    ids, mask = render_chat(CHATS[1], tok)
    assert len(ids) == len(mask) and any(mask) and not all(mask)
    said = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "The parts that matter least." in said and "Distillation teaches the smaller model." in said
    assert "pruning" not in said and "briefly" not in said and "user" not in said
    assert said.count("</s>") == 2  # each assistant turn's end marker is learned too


def test_packing_keeps_the_mask_aligned(chat_teacher, chat_file):
    tok = _tok(chat_teacher)
    ds = load_dataset([chat_file], tok, seq_len=16)
    stream, mask = tokenize_with_masks([CHATS[i % 2] for i in range(60)], tok)
    n = ds.blocks.shape[0]
    assert n == len(stream) // 16 and ds.masks.shape == ds.blocks.shape
    assert ds.blocks.reshape(-1).tolist() == stream[: n * 16] and ds.masks.reshape(-1).tolist() == mask[: n * 16]
    # every block's masked tokens are assistant text
    flat = [t for t, m in zip(ds.blocks.reshape(-1).tolist(), ds.masks.reshape(-1).tolist(), strict=True) if m]
    text = tok.decode(flat)
    assert "Mamba layers with attention layers." in text and "What do hybrid" not in text


def test_non_assistant_tokens_get_no_gradient():
    from minitron.distill.teacher import kd_loss, kl_mask

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 8, 30, generator=g).requires_grad_(True)
    t = torch.randn(2, 8, 30, generator=g)
    targets = torch.zeros(2, 8, dtype=torch.bool)
    targets[0, 3:6] = True  # assistant tokens 3..5 are predicted at positions 2..4
    targets[1, 7] = True
    for kind in ("forward-kl", "reverse-kl", "jsd"):
        (grad,) = torch.autograd.grad(kd_loss(s, t.clone(), kl_mask(targets), kind=kind), s)
        live = grad.abs().sum(-1) > 0
        want = torch.zeros(2, 8, dtype=torch.bool)
        want[0, 2:5] = True
        want[1, 6] = True
        assert torch.equal(live, want), kind


def test_trainer_ignores_unmasked_blocks(chat_teacher, chat_student):
    """A block with no assistant token contributes no gradient (KL and LM loss alike)."""
    from minitron.distill.trainer import TrainConfig, Trainer
    from minitron.models.checkpoint import load_model

    teacher, student = load_model(chat_teacher), load_model(chat_student)
    blocks = torch.randint(3, 384, (4, 16), generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(4, 16, dtype=torch.bool)
    cfg = TrainConfig(steps=1, micro_batch_size=4, ce_weight=1.0)
    Trainer(teacher, student, blocks, None, cfg, train_masks=masks).accumulate_gradients(0)
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in student.parameters())


def test_chat_distill_end_to_end_and_cached(chat_teacher, chat_student, chat_file, tmp_path):
    r = CliRunner().invoke(app, base_args(chat_teacher, chat_student, chat_file, tmp_path / "o", "--steps", "2",
                                          "--json", "--ce-weight", "0.5"))  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["final_eval"]["tokens"] < 4 * 32  # only positions before assistant tokens count
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["teacher-logits", str(chat_teacher), "--data", str(chat_file), "--seq-len", "32",
                                 "--top-k", "384", "--out", str(cache)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((cache / "index.json").read_text())["splits"]["train"]["masks_sha256"]
    r = CliRunner().invoke(app, base_args(chat_teacher, chat_student, chat_file, tmp_path / "c", "--steps", "2",
                                          "--json", "--ce-weight", "0.5", "--teacher-logits", str(cache)))  # fmt: skip
    assert r.exit_code == 0, r.output
    cached = json.loads(r.stdout)
    assert cached["train"]["loss"] == pytest.approx(doc["train"]["loss"], rel=1e-4)


# ---------------------------------------------------------------------- mixes
def test_data_specs():
    assert parse_data_specs(["a.txt", "b.txt"]) == ([Path("a.txt"), Path("b.txt")], None)
    assert parse_data_specs(["a.jsonl:0.7", "b.txt:0.3"]) == ([Path("a.jsonl"), Path("b.txt")], [0.7, 0.3])
    for bad in (["a.txt:-1"], ["a.txt:x"], ["a.txt:0"], ["a.txt:0.5", "b.txt"], ["a.txt:nan"]):
        with pytest.raises(InputError) as e:
            parse_data_specs(bad)
        assert e.value.flag == "--data"


def test_mix_is_deterministic_resumable_and_matches_the_weights():
    from minitron.distill.sampling import Mix

    sources = [{"start": 0, "blocks": 7}, {"start": 7, "blocks": 50}]
    a, b = Mix(sources, [0.7, 0.3], seed=1), Mix(sources, [0.7, 0.3], seed=1)
    g, steps = 16, 400
    stream = [i for s in range(steps) for i in a.indices(s, g)]
    assert b.indices(123, g) == stream[123 * g : 124 * g]  # a fresh sampler (a resumed run) reads the same blocks
    assert Mix(sources, [0.7, 0.3], seed=2).indices(0, g) != a.indices(0, g)
    first = sum(i < 7 for i in stream) / len(stream)
    sigma = math.sqrt(0.7 * 0.3 / len(stream))
    assert abs(first - 0.7) < 4 * sigma
    assert a.realised(steps, g)[0] == pytest.approx(first)
    # each source cycles through its own epochs: the small one is read many times, evenly
    counts = torch.bincount(torch.tensor([i for i in stream if i < 7]), minlength=7)
    assert counts.max() - counts.min() <= 1


def test_mix_cli_reports_the_realised_mix(tiny_model_dir, text_file, tmp_path):
    student = make_pruned_student(tiny_model_dir, tmp_path / "s")
    other = tmp_path / "other.txt"
    other.write_text(" ".join(["zebra quartz jukebox vortex"] * 400))
    out = tmp_path / "o"
    r = CliRunner().invoke(app, base_args(tiny_model_dir, student, Path(f"{text_file}:0.75"), out, "--data",
                                          f"{other}:0.25", "--steps", "6", "--json"))  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    mix = [x["mix"] for x in lines if "mix" in x]
    assert len(mix) == 6 and set(mix[-1]) == {str(text_file), str(other)}
    assert sum(mix[-1].values()) == pytest.approx(1.0)
    assert json.loads((out / "minitron.json").read_text())["inputs"]["data_weights"] == [0.75, 0.25]


@pytest.mark.parametrize("case", ["negative", "not_a_number", "no_messages", "no_template"])
def test_bad_mix_or_chat_input_is_one_line(case, tiny_model_dir, chat_teacher, chat_student, chat_file, tmp_path):
    teacher, student, data = chat_teacher, chat_student, [str(chat_file)]
    if case == "negative":
        data = [f"{chat_file}:-0.5"]
    elif case == "not_a_number":
        data = [f"{chat_file}:lots"]
    elif case == "no_messages":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(chat_file.read_text() + json.dumps({"text": "plain"}) + "\n")
        data = [str(bad)]
    elif case == "no_template":
        teacher = tiny_model_dir
        student = make_pruned_student(tiny_model_dir, tmp_path / "plain")
    args = base_args(teacher, student, Path(data[0]), tmp_path / "out", "--steps", "1")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data:"), r.stderr
    if case == "no_template":
        assert "no chat template" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
