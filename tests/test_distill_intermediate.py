"""`distill --intermediate-weight` (`minitron.distill.intermediate`): the intermediate-state loss.

Checked against references that do not use its code: the states from transformers' own
`output_hidden_states` (and the final norm's input), the map against the basis `prune` used
(`rotation.from_covariance` of the scores, or the kept channels), the loss by its formula written out.
"""

from __future__ import annotations

import json

import pytest
import torch
from distill_helpers import base_args, make_pruned_student
from prune_helpers import score_dir
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.distill import intermediate as im
from minitron.distill.trainer import TrainConfig, Trainer
from minitron.models.checkpoint import load_model, open_checkpoint
from minitron.prune.rotation import from_covariance

DROP = [2, 5]  # one Mamba block and one MLP block of M-M*EM-*M


@pytest.fixture(scope="module")
def scores(tiny_model_dir, text_file, tmp_path_factory):
    return score_dir(tmp_path_factory.mktemp("scores") / "s", tiny_model_dir, text_file)


def prune(tiny_model_dir, scores, out, *extra):
    r = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--scores", str(scores), "--hidden-size", "48",
                                 "--drop-layers", ",".join(map(str, DROP)), "--out", str(out), *extra])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def pca_student(tiny_model_dir, scores, tmp_path_factory):
    return prune(tiny_model_dir, scores, tmp_path_factory.mktemp("pca") / "student", "--hidden-basis", "pca")


def reference_states(model, ids) -> list[torch.Tensor]:
    """Each layer's output: transformers' hidden_states[1:-1], and the final norm's input for the last."""
    last = {}
    h = model.model.norm_f.register_forward_pre_hook(lambda _m, args: last.setdefault("x", args[0]))
    try:
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        h.remove()
    return [*out.hidden_states[1:-1], last["x"]]


def test_layer_map_from_the_prune_record(tiny_model_dir, pca_student):
    t, s = open_checkpoint(tiny_model_dir).arch, open_checkpoint(pca_student).arch
    assert im.layer_map(pca_student, t, s) == [i for i in range(t.num_layers) if i not in DROP]
    assert im.layer_map(tiny_model_dir, t, t) == list(range(t.num_layers))  # no record, same depth: identity


def test_hidden_map_is_the_basis_prune_used(tiny_model_dir, scores, pca_student, tmp_path):
    from safetensors.torch import load_file

    teacher = load_model(tiny_model_dir, dtype="fp32", device="cpu")
    arch = open_checkpoint(tiny_model_dir).arch
    q = from_covariance(arch, load_file(scores / "scores.safetensors")["hidden_covariance"]).basis[:, :48].float()
    p, residual = im.hidden_map(teacher, load_model(pca_student, dtype="fp32", device="cpu"))
    assert p.shape == (64, 48) and residual < 1e-5
    torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    # channel selection: the map is the selection matrix of the kept channels
    chan = prune(tiny_model_dir, scores, tmp_path / "chan", "--hidden-basis", "channels")
    kept = json.loads((chan / "minitron.json").read_text())["result"]["indices"]["hidden"]
    p, residual = im.hidden_map(teacher, load_model(chan, dtype="fp32", device="cpu"))
    sel = torch.zeros(64, 48)
    sel[kept, torch.arange(48)] = 1
    assert residual < 1e-5
    torch.testing.assert_close(p, sel, atol=1e-4, rtol=0)


def test_first_step_loss_equals_the_formula(tiny_model_dir, pca_student, text_file):
    from minitron.data import load_blocks
    from minitron.models.checkpoint import load_tokenizer

    teacher = load_model(tiny_model_dir, dtype="fp32", device="cpu").eval()
    student = load_model(pca_student, dtype="fp32", device="cpu")
    blocks = load_blocks([text_file], load_tokenizer(tiny_model_dir), seq_len=32)[:8]
    kept = [i for i in range(9) if i not in DROP]
    cfg = TrainConfig(steps=1, lr=1e-9, micro_batch_size=2, global_batch_size=4, intermediate_weight=3.0)
    trainer = Trainer(teacher, student, blocks, None, cfg, layer_map=kept)
    idx = trainer.order.indices(0, 4)
    with torch.no_grad():  # the reference, from the untrained student
        p, _ = im.hidden_map(teacher, student)
        t_all = reference_states(teacher, blocks[idx])
        s_all = reference_states(student, blocks[idx])
        t_cal = reference_states(teacher, blocks[idx[:1]])
        total = 0.0
        for j, i in enumerate(kept):
            c = (t_cal[i] @ p).pow(2).sum(-1).mean()
            total += float(((s_all[j] - t_all[i] @ p).pow(2).sum(-1)).sum() / c)
        expected = total / len(kept) / (4 * 32)
    m = trainer.train_step()
    assert m["intermediate"] == pytest.approx(expected, rel=1e-4)
    assert m["loss"] == pytest.approx(m["kd"] + 3.0 * m["intermediate"], rel=1e-6)


def test_micro_batching_does_not_change_the_update(tiny_model_dir, pca_student, text_file):
    from minitron.data import load_blocks
    from minitron.models.checkpoint import load_tokenizer

    teacher = load_model(tiny_model_dir, dtype="fp32", device="cpu").eval()
    blocks = load_blocks([text_file], load_tokenizer(tiny_model_dir), seq_len=32)[:8]
    kept = [i for i in range(9) if i not in DROP]
    out = []
    for micro in (1, 4):
        student = load_model(pca_student, dtype="fp32", device="cpu")
        cfg = TrainConfig(steps=2, lr=1e-3, micro_batch_size=micro, global_batch_size=4, intermediate_weight=10.0)
        Trainer(teacher, student, blocks, None, cfg, layer_map=kept).train()
        out.append(student.state_dict())
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], atol=2e-6, rtol=1e-4)


def test_resume_keeps_the_map_of_the_start(tiny_model_dir, pca_student, text_file):
    from minitron.data import load_blocks
    from minitron.models.checkpoint import load_tokenizer

    teacher = load_model(tiny_model_dir, dtype="fp32", device="cpu").eval()
    blocks = load_blocks([text_file], load_tokenizer(tiny_model_dir), seq_len=32)[:8]
    kept = [i for i in range(9) if i not in DROP]
    cfg = dict(steps=3, lr=1e-2, micro_batch_size=2, intermediate_weight=1.0)
    student = load_model(pca_student, dtype="fp32", device="cpu")
    first = Trainer(teacher, student, blocks, None, TrainConfig(**cfg), layer_map=kept)
    first.train_step()
    state = first.state_dict()
    again = Trainer(teacher, student, blocks, None, TrainConfig(**cfg), layer_map=kept)  # embeddings have moved
    assert not torch.equal(again.intermediate.p, first.intermediate.p)
    again.load_state_dict(state)
    assert torch.equal(again.intermediate.p, first.intermediate.p)
    torch.testing.assert_close(again.intermediate.scale, first.intermediate.scale)


def test_cli_reports_it(tiny_model_dir, pca_student, text_file, tmp_path):
    out = tmp_path / "d"
    r = CliRunner().invoke(app, [*base_args(tiny_model_dir, pca_student, text_file, out, "--steps", "3",
                                            "--intermediate-weight", "10", "--json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["intermediate"]["weight"] == 10.0
    assert doc["intermediate"]["layer_map"] == [i for i in range(9) if i not in DROP]
    assert doc["intermediate"]["map_shape"] == [64, 48] and doc["intermediate"]["map_residual"] < 1e-5
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "intermediate" in m]
    assert len(steps) == 3 and all(m["intermediate"] > 0 for m in steps)
    prov = json.loads((out / "minitron.json").read_text())
    assert prov["options"]["train"]["intermediate_weight"] == 10.0


@pytest.mark.parametrize("extra, match", [
    (["--intermediate-weight", "-1"], "must be a finite number >= 0, got -1.0"),
    (["--intermediate-weight", "nan"], "must be a finite number >= 0"),
    (["--intermediate-weight", "1", "--teacher-logits", "cache"], "cached teacher logits"),
])  # fmt: skip
def test_bad_input_is_refused(tiny_model_dir, pca_student, text_file, tmp_path, extra, match):
    out = tmp_path / "o" / "d"
    out.parent.mkdir()
    r = CliRunner().invoke(app, base_args(tiny_model_dir, pca_student, text_file, out, "--steps", "2", *extra))
    assert r.exit_code == 2, r.output
    assert "--intermediate-weight" in r.stderr and match in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(out.parent.iterdir()) == []


def test_student_of_unknown_depth_is_refused(tiny_model_dir, text_file, tmp_path):
    student = make_pruned_student(tiny_model_dir, tmp_path / "s")  # 7 layers, no prune record
    out = tmp_path / "o" / "d"
    out.parent.mkdir()
    r = CliRunner().invoke(app, base_args(tiny_model_dir, student, text_file, out, "--steps", "2",
                                          "--intermediate-weight", "1"))  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "--intermediate-weight" in r.stderr and "no minitron.json" in r.stderr
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(tiny_model_dir, pca_student, text_file, tmp_path, mode):
    """torchrun 2 (gloo), DDP or FSDP2, with the loss equals 1 process with the same global batch (the
    loss is a sum); under FSDP2 the map is solved from the gathered embeddings."""
    from distill_helpers import run_cli, weights

    args = ["--steps", "3", "--global-batch-size", "4", "--micro-batch-size", "2", "--intermediate-weight", "10",
            "--json"]  # fmt: skip
    one = run_cli(base_args(tiny_model_dir, pca_student, text_file, tmp_path / "one", *args))
    extra = ["--fsdp"] if mode == "fsdp" else []
    two = run_cli(base_args(tiny_model_dir, pca_student, text_file, tmp_path / "two", *args, *extra), torchrun=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["world_size"] == 2 and a["intermediate"] == b["intermediate"]
    assert json.loads((tmp_path / "two" / "minitron.json").read_text())["options"]["fsdp"] is (mode == "fsdp")
    assert b["train"]["intermediate"] == pytest.approx(a["train"]["intermediate"], rel=1e-5)
    assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-5)
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


def test_fsdp_resume_after_sigkill(tiny_model_dir, pca_student, text_file, tmp_path):
    """Under FSDP2 with the loss, rank 0 SIGKILLs itself after the step-2 checkpoint; the rerun resumes
    (the loss's map and c_j travel with the checkpoint's small entries, broadcast from rank 0) and ends
    with the uninterrupted run's weights, bit for bit."""
    import subprocess
    import sys

    from distill_helpers import run_cli, subprocess_env, weights

    args = ["--steps", "4", "--global-batch-size", "4", "--micro-batch-size", "2", "--save-every", "2",
            "--intermediate-weight", "10", "--fsdp", "--json"]  # fmt: skip
    ref = run_cli(base_args(tiny_model_dir, pca_student, text_file, tmp_path / "ref", *args), torchrun=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "minitron",
           *base_args(tiny_model_dir, pca_student, text_file, out, *args)]  # fmt: skip
    killed = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env() | {"MINITRON_FAULT": "checkpoint-saved"},
                            timeout=300)  # fmt: skip
    assert killed.returncode != 0 and not out.exists()
    r = run_cli(base_args(tiny_model_dir, pca_student, text_file, out, *args), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    doc, want = json.loads(r.stdout), json.loads(ref.stdout)
    assert doc["resumed_from"] == 2 and doc["intermediate"] == want["intermediate"]
    assert doc["train"]["loss"] == want["train"]["loss"]
    a, b = weights(tmp_path / "ref"), weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k
