"""`minitron distill`: the trainer's pieces, the CLI end to end, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student, read_json
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.distill.sampling import rank_micro_batches, step_indices
from minitron.distill.schedule import lr_at
from minitron.distill.trainer import TrainConfig, Trainer, quick_distill


@pytest.fixture(scope="module")
def student_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_pruned_student(tiny_model_dir, tmp_path_factory.mktemp("student") / "pruned")


def _run(args):
    return CliRunner().invoke(app, args)


# ---------------------------------------------------------------------- pure pieces
def test_schedules():
    kw = dict(lr=1.0, min_lr=0.1, warmup=2)
    assert [lr_at(s, 10, kind="constant", **kw) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    cos = [lr_at(s, 10, kind="cosine", **kw) for s in range(10)]
    assert cos[2] == 1.0 and math.isclose(cos[9], 0.1) and all(a >= b for a, b in zip(cos[2:-1], cos[3:], strict=True))
    wsd = [lr_at(s, 12, kind="wsd", decay_fraction=0.2, **kw) for s in range(12)]
    assert wsd[:2] == [0.5, 1.0] and wsd[2:10] == [1.0] * 8  # stable
    assert wsd[10] == pytest.approx(0.55) and wsd[11] == pytest.approx(0.1)  # decay over the last 2 steps


def test_data_order_is_a_pure_function_of_the_step():
    n, g = 10, 4
    stream = [i for s in range(5) for i in step_indices(s, n, g, seed=3)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))  # epochs
    assert step_indices(3, n, g, seed=3) == stream[12:16]  # resuming at step 3 reads the same blocks
    assert step_indices(0, n, g, seed=4) != step_indices(0, n, g, seed=3)
    assert rank_micro_batches([0, 1, 2, 3, 4, 5, 6, 7], 2, rank=1, world=2) == [[4, 5], [6, 7]]


def test_config_validation_names_the_flag():
    from minitron.errors import InputError

    for kw, flag in (({"steps": 0}, "--steps"), ({"global_batch_size": 6}, "--global-batch-size"),
                     ({"schedule": "linear"}, "--schedule"), ({"loss": "kl"}, "--loss"), ({"lr": 0}, "--lr"),
                     ({"adam_beta1": 1.0}, "--adam-beta1"), ({"adam_beta1": -0.1}, "--adam-beta1"),
                     ({"adam_beta2": float("nan")}, "--adam-beta2")):  # fmt: skip
        with pytest.raises(InputError) as e:
            TrainConfig(**({"steps": 2, "micro_batch_size": 4} | kw)).validate()
        assert e.value.flag == flag


# ---------------------------------------------------------------------- the trainer in memory
def _models(tiny_model_dir, student_dir):
    from minitron.models.checkpoint import load_model

    return load_model(tiny_model_dir), load_model(student_dir)


def _blocks(n=24, seed=0):
    return torch.randint(3, 384, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, student_dir):
    """4 blocks in one micro-batch or in two of 2: the same loss and the same gradients."""
    teacher, s1 = _models(tiny_model_dir, student_dir)
    _, s2 = _models(tiny_model_dir, student_dir)
    blocks = _blocks()
    grads, sums = [], []
    for student, micro in ((s1, 4), (s2, 2)):
        cfg = TrainConfig(steps=2, micro_batch_size=micro, global_batch_size=4, lr=1e-3, ce_weight=0.5)
        sums.append(Trainer(teacher, student, blocks, None, cfg).accumulate_gradients(1))
        grads.append({n: p.grad for n, p in student.named_parameters()})
    torch.testing.assert_close(sums[0], sums[1])
    assert sums[0][0] > 0 and sums[0][1] > 0
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7, msg=k)
    assert any(float(g.abs().max()) > 0 for g in grads[0].values())


def test_adam_betas_are_the_optimiser_s(tiny_model_dir, student_dir):
    """--adam-beta1/2: three steps of the trainer equal AdamW written out by hand with those betas, on the
    gradients the trainer stepped with (after its clip); beta1 0.7 and 0.9 differ from the second step."""
    blocks = _blocks(16)
    finals = {}
    for b1 in (0.7, 0.9):
        teacher, student = _models(tiny_model_dir, student_dir)
        start = {n: p.detach().clone() for n, p in student.named_parameters()}
        cfg = TrainConfig(steps=3, micro_batch_size=4, lr=1e-3, warmup_steps=1, adam_beta1=b1, adam_beta2=0.9)
        tr = Trainer(teacher, student, blocks, None, cfg)
        seen, step = [], tr.optimizer.step

        def record(step=step, seen=seen, student=student):
            seen.append({n: p.grad.detach().clone() for n, p in student.named_parameters()})
            step()

        tr.optimizer.step = record
        for _ in range(3):
            tr.train_step()
        ref, m, v = dict(start), {n: 0 * x for n, x in start.items()}, {n: 0 * x for n, x in start.items()}
        for t, grads in enumerate(seen, start=1):
            lr = lr_at(t - 1, 3, lr=1e-3, min_lr=1e-4, warmup=1, kind="wsd")
            for n, g in grads.items():
                m[n] = b1 * m[n] + (1 - b1) * g
                v[n] = 0.9 * v[n] + 0.1 * g * g
                ref[n] = ref[n] - lr * (m[n] / (1 - b1**t)) / ((v[n] / (1 - 0.9**t)).sqrt() + 1e-8)
        for n, p in student.named_parameters():
            torch.testing.assert_close(p.detach(), ref[n], rtol=1e-5, atol=1e-7, msg=n)
        finals[b1] = {n: p.detach().clone() for n, p in student.named_parameters()}
    assert any(not torch.allclose(finals[0.7][n], finals[0.9][n]) for n in finals[0.7])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, student_dir):
    teacher, s1 = _models(tiny_model_dir, student_dir)
    _, s2 = _models(tiny_model_dir, student_dir)
    from minitron.recipes.distill_models import prepare_student

    prepare_student(s2, gradient_checkpointing=True)  # what distill --gradient-checkpointing does
    blocks = _blocks(8)
    for student in (s1, s2):
        Trainer(teacher, student, blocks, None, TrainConfig(steps=1, micro_batch_size=4)).accumulate_gradients(0)
    assert s2.is_activation_checkpointing and s2.training and s2.model.layers[0].gradient_checkpointing
    for (k, a), b in zip(s1.named_parameters(), s2.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8, msg=k)


def test_quick_distill_lowers_kl_and_leaves_the_teacher(tiny_model_dir, student_dir):
    teacher, student = _models(tiny_model_dir, student_dir)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    blocks = _blocks(40)
    res = quick_distill(teacher, student, blocks[:32], blocks[32:], steps=8, lr=3e-4, micro_batch_size=4,
                        initial_eval=True, schedule="constant")  # fmt: skip
    assert {"kl", "loss", "steps", "tokens"} <= set(res) and res["steps"] == 8 and res["tokens"] == 8 * 4 * 16
    assert res["kl"] < 0.9 * res["initial_eval"]["kl"]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())  # handed back as given


def test_student_sharing_teacher_tensors_never_writes_the_teacher(tiny_model_dir):
    """A 'pruned' student that keeps everything may hold views of the teacher's tensors."""
    from minitron.models.checkpoint import load_model

    teacher, student = load_model(tiny_model_dir), load_model(tiny_model_dir)
    with torch.no_grad():
        for (_, ps), pt in zip(student.named_parameters(), teacher.parameters(), strict=True):
            ps.data = pt.data  # shared storage
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    # identical models: KL 0 and no gradient from it; the LM loss moves the student
    quick_distill(teacher, student, _blocks(8), _blocks(4, seed=1), steps=2, lr=1e-2, micro_batch_size=4, ce_weight=1.0)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


# ---------------------------------------------------------------------- the CLI
def test_cli_end_to_end(tiny_model_dir, student_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "distilled"
    args = base_args(tiny_model_dir, student_dir, text_file, out, "--steps", "8", "--eval-data", str(text_file),
                     "--eval-every", "4", "--save-every", "4", "--schedule", "cosine", "--warmup-steps", "1", "--json")  # fmt: skip
    r = _run(args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for k in ("steps", "tokens", "initial_eval", "final_eval", "out_dir", "tokens_per_second"):
        assert k in doc
    assert doc["steps"] == 8 and doc["tokens"] == 8 * 4 * 32 and doc["out_dir"] == str(out)
    assert doc["final_eval"]["kl"] < doc["initial_eval"]["kl"]
    assert doc["tokens_per_second"] > 0 and doc["eval_source"] == "eval-data"
    # a stock Hugging Face directory, with tokenizer, metrics and provenance; no run directory left
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "NemotronHForCausalLM"
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(student_dir).get_vocab()
    prov = read_json(out / "minitron.json")
    assert prov["command"] == "distill" and prov["result"]["final_eval"] == doc["final_eval"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval" in x] == [0, 4, 8]
    assert [x["step"] for x in lines if "eval" not in x] == list(range(1, 9))
    assert {"step", "tokens", "loss", "kl", "lr", "grad_norm", "tokens_per_second"} <= set(lines[1])
    assert not (tmp_path / "distilled.partial").exists()
    # the output differs from the student (it trained) and the inputs are untouched
    assert _run(base_args(tiny_model_dir, student_dir, text_file, out, "--steps", "1")).exit_code == 2  # exists


def test_cli_tokens_and_human_output(tiny_model_dir, student_dir, text_file, tmp_path):
    out = tmp_path / "o"
    r = _run(base_args(tiny_model_dir, student_dir, text_file, out, "--tokens", "300", "--loss", "jsd", "--top-k", "8",
                       "--ce-weight", "0.1"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "distilled" in r.stdout and "3 steps" in r.stdout  # ceil(300 / (4 x 32))


def _vocab_student(tmp_path):
    from minitron.testing import make_tiny_model_dir, tiny_config

    return make_tiny_model_dir(tmp_path / "v512", cfg=tiny_config(vocab_size=512))


def _other_tokenizer_student(student_dir, tmp_path):
    from minitron.testing import build_tokenizer

    d = tmp_path / "othertok"
    shutil.copytree(student_dir, d)
    build_tokenizer(corpus="entirely different words: zebra quartz jukebox vortex " * 20).save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "case, flag",
    [
        ("vocab", "--student"),
        ("tokenizer_ids", "--student"),
        ("not_a_model", "--student"),
        ("missing_student", "--student"),
        ("no_data", "--data"),
        ("empty_data", "--data"),
        ("steps0", "--steps"),
        ("steps_and_tokens", "--steps"),
        ("bad_batch", "--global-batch-size"),
        ("too_little_data", "--data"),
        ("beta1", "--adam-beta1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, flag, tiny_model_dir, student_dir, text_file, tmp_path):
    student, data, extra = student_dir, text_file, ["--steps", "2"]
    if case == "vocab":
        student = _vocab_student(tmp_path)
    elif case == "tokenizer_ids":
        student = _other_tokenizer_student(student_dir, tmp_path)
    elif case == "not_a_model":
        student = tmp_path / "scores"
        student.mkdir()
        (student / "scores.json").write_text("{}")
    elif case == "missing_student":
        student = tmp_path / "nope"
    elif case == "no_data":
        data = tmp_path / "missing.txt"
    elif case == "empty_data":
        data = tmp_path / "empty.txt"
        data.write_text("")
    elif case == "steps0":
        extra = ["--steps", "0"]
    elif case == "steps_and_tokens":
        extra = ["--steps", "2", "--tokens", "100"]
    elif case == "bad_batch":
        extra = ["--steps", "2", "--global-batch-size", "6"]
    elif case == "beta1":
        extra = ["--steps", "2", "--adam-beta1", "1"]
    elif case == "too_little_data":
        data = tmp_path / "short.txt"
        data.write_text("a few words only")
    out = tmp_path / "out"
    r = _run(base_args(tiny_model_dir, student, data, out, *extra))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:"), r.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert not list(tmp_path.glob(".out*"))


def test_unfinished_run_with_other_options_is_refused(tiny_model_dir, student_dir, text_file, tmp_path):
    out = tmp_path / "out"
    part = tmp_path / "out.partial"
    part.mkdir()
    (part / "run.json").write_text(json.dumps({"seed": 123}))
    r = _run(base_args(tiny_model_dir, student_dir, text_file, out, "--steps", "1"))
    assert r.exit_code == 2 and "--restart" in r.stderr and not out.exists()
    r = _run(base_args(tiny_model_dir, student_dir, text_file, out, "--steps", "1", "--restart"))
    assert r.exit_code == 0, r.output
    assert out.is_dir() and not part.exists()


def test_help_has_examples():
    r = _run(["distill", "--help"])
    assert r.exit_code == 0 and "Examples" in r.stdout and "--global-batch-size" in r.stdout
