"""`distill --dry-run`: the memory plan's terms, its activation count, the cheapest fix, the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student
from typer.testing import CliRunner

from minitron.cli.main import app
from minitron.distill.memory_plan import PlanInput, activation_elements_per_token, cheapest_fit, plan
from minitron.models.architecture import Architecture
from minitron.testing import build_model, tiny_config

DENSE = dict(hybrid_override_pattern="M-M*M-", vocab_size=512, hidden_size=128, intermediate_size=384,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, mamba_num_heads=8, mamba_head_dim=16,
             n_groups=2, ssm_state_size=16, chunk_size=32, max_position_embeddings=1024)  # fmt: skip


def _saved_bytes(model, ids) -> int:
    """Bytes autograd saves in a forward (distinct storages, parameters excluded)."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, use_cache=False)
    return sum(v for k, v in seen.items() if k not in params)


def test_activation_count_matches_what_autograd_saves():
    cfg = tiny_config(**DENSE)
    model = build_model(cfg).train()
    arch = Architecture.from_config(cfg)
    b, length = 2, 128
    got = _saved_bytes(model, torch.randint(3, 512, (b, length)))
    p = plan(PlanInput(teacher=arch, student=arch, seq_len=length, micro_batch_size=b))
    want = p["activations_without_checkpointing"]
    assert abs(got - want) / got < 0.02, (got, want)
    per = {c: activation_elements_per_token(arch, c) for c in "M-*"}
    assert per["M"] > per["-"] > per["*"] > 0


def test_terms_fsdp_cache_and_checkpointing():
    t = Architecture.from_config(tiny_config(**DENSE))
    s = Architecture.from_config(tiny_config(**(DENSE | {"hybrid_override_pattern": "M-M*"})))
    base = PlanInput(teacher=t, student=s, seq_len=256, micro_batch_size=4)
    one = plan(base)["terms"]
    assert one["teacher_weights"] == t.total_params * 4 and one["student_weights"] == s.total_params * 4
    assert one["gradients"] == s.total_params * 4 and one["optimizer"] == s.total_params * 8
    eight = plan(PlanInput(**(vars(base) | {"devices": 8, "fsdp": True})))["terms"]
    assert eight["optimizer"] == -(-s.total_params * 8 // 8) and eight["fsdp_gathered"] > 0
    assert eight["activations"] == one["activations"]  # activations are per micro-batch, not sharded
    cached = plan(PlanInput(**(vars(base) | {"cached_teacher": True})))["terms"]
    assert cached["teacher_weights"] == 0
    ckpt = plan(PlanInput(**(vars(base) | {"gradient_checkpointing": True})))
    assert ckpt["terms"]["activations"] < one["activations"] / 2
    gpu = plan(PlanInput(**(vars(base) | {"device": "cuda", "compute_dtype": "bf16"})))
    assert gpu["terms"]["teacher_weights"] == t.total_params * 2 and gpu["mamba_path"] == "kernels"


def test_intermediate_term_is_what_the_trainer_holds(tiny_model_dir, tmp_path):
    """--intermediate-weight: the plan's term equals the bytes of the teacher states the trainer captures
    (its kept layers only) plus what the loss saves for its backward, counted on a real step."""
    from distill_helpers import STUDENT_PATTERN_KEEP

    from minitron.distill.trainer import TrainConfig, Trainer
    from minitron.models.checkpoint import load_model

    teacher = load_model(tiny_model_dir)
    student = load_model(make_pruned_student(tiny_model_dir, tmp_path / "student"))
    t_arch, s_arch = (Architecture.from_config(m.config.to_dict()) for m in (teacher, student))
    kept = list(STUDENT_PATTERN_KEEP)
    b, length = 2, 16
    tr = Trainer(teacher, student, torch.randint(3, 384, (4, length)), None,
                 TrainConfig(steps=1, micro_batch_size=b, intermediate_weight=1.0), layer_map=kept)  # fmt: skip
    ids = tr.train_blocks[:b]
    with tr._states(tr.teacher, detach=True) as t_states, torch.no_grad():
        teacher(input_ids=ids, use_cache=False)
    with tr._states(student, detach=False) as s_states:
        student(input_ids=ids, use_cache=False)
    saved: dict[int, int] = {}
    known = {v.untyped_storage().data_ptr() for v in s_states.values()}  # layer outputs: in `activations`

    def pack(t):
        if t.untyped_storage().data_ptr() not in known:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tr.intermediate.sum(t_states, s_states, None)
    assert sorted(t_states) == kept  # the dropped teacher layers are not captured
    held = sum(v.untyped_storage().nbytes() for v in t_states.values()) + sum(saved.values())
    x = PlanInput(teacher=t_arch, student=s_arch, seq_len=length, micro_batch_size=b, intermediate=True)
    planned = plan(x)["terms"]["intermediate"]
    assert held > 0 and abs(planned - held) <= 4 * len(kept), (planned, held)  # (+ the c_j scalars the loss saves)
    assert plan(PlanInput(**(vars(x) | {"intermediate": False})))["terms"]["intermediate"] == 0
    # it needs the teacher model: the cheapest fit never offers cached logits with it
    big = PlanInput(teacher=t_arch, student=s_arch, seq_len=16, micro_batch_size=1, intermediate=True)
    plain = PlanInput(**(vars(big) | {"intermediate": False}))
    tight = plan(PlanInput(**(vars(plain) | {"cached_teacher": True})))["total"]  # checkpointing is not enough
    assert plan(PlanInput(**(vars(plain) | {"gradient_checkpointing": True})))["total"] > tight
    assert "--teacher-logits" in (cheapest_fit(plain, tight) or ("?",))[0]
    found = cheapest_fit(big, tight)
    assert found is None or "--teacher-logits" not in found[0]


def test_cheapest_fit_prefers_the_cheapest_change():
    t = Architecture.from_config(tiny_config(**DENSE))
    x = PlanInput(teacher=t, student=t, seq_len=1024, micro_batch_size=8)
    total = plan(x)["total"]
    assert cheapest_fit(x, total)[0] is not None  # fits already: the first candidate fits too
    what, doc = cheapest_fit(x, total - 1)
    assert what == "--micro-batch-size 4" and doc["total"] < total
    runtime = plan(x)["terms"]["runtime"]
    found = cheapest_fit(x, runtime + 1024)  # almost nothing: only many devices might do, or nothing
    assert found is None or "devices" in found[0]
    with_devices = cheapest_fit(x, plan(x)["terms"]["activations"] + runtime + (1 << 20))
    assert with_devices is not None


# ---------------------------------------------------------------------- the CLI
def _dry(*extra):
    return CliRunner().invoke(app, ["distill", "--teacher", "nemotron-nano-12b-v2-base", "--student",
                                    "nemotron-nano-9b-v2", "--data", "unused.txt", "--out", "x", "--steps", "1",
                                    "--seq-len", "8192", "--micro-batch-size", "1", "--dry-run", *extra])  # fmt: skip


def test_dry_run_12b_9b_on_80gb_gpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _dry("--gpu", "a100-80gb", "--nproc", "8", "--fsdp", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["fits"] and set(doc["plans"]) == {"1", "8"} and doc["asked"]["devices"] == 8
    assert doc["plans"]["1"]["total"] > 80 * 2**30 > doc["plans"]["8"]["total"]
    r = _dry("--gpu", "a100-80gb")
    assert r.exit_code == 3, r.output
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: --gpu:") and "cheapest change that fits" in line[0]
    assert "memory per device" in r.stdout and "teacher weights" in r.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def test_dry_run_with_the_intermediate_loss(tmp_path, monkeypatch):
    """12B -> 9B with --intermediate-weight: its term is in the plan (56 student layers x 8192 tokens x
    (5120 bf16 + 4480 fp32)) and in the cheapest fit; when only dropping it would fit, the error says so."""
    monkeypatch.chdir(tmp_path)
    r = _dry("--gpu", "a100-80gb", "--nproc", "1", "--intermediate-weight", "10", "--json")
    assert r.exit_code == 3, r.output
    doc = json.loads(r.stdout)  # one document: the plan, with the error in it
    assert doc["exit_code"] == 3 and doc["error"].startswith("--gpu:") and doc["fits"] is False
    assert r.stderr.strip().splitlines()[-1] == f"error: {doc['error']}"
    term = 56 * 8192 * (5120 * 2 + 4480 * 4)
    assert doc["asked"]["terms"]["intermediate"] == term and doc["asked"]["intermediate"]
    assert doc["suggestion"].startswith("--gradient-checkpointing + 4 devices with --fsdp")
    assert doc["suggested_plan"]["terms"]["intermediate"] == term
    r = _dry("--memory-budget", "30GiB", "--device", "cuda", "--nproc", "1", "--intermediate-weight", "10")
    assert r.exit_code == 3, r.output
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: --memory-budget:"), r.stderr
    assert "fits with --intermediate-weight" in line[0] and "without it: --gradient-checkpointing" in line[0]
    assert not list(tmp_path.iterdir())


def test_budget_is_checked_before_loading(tiny_model_dir, text_file, tmp_path):
    student = make_pruned_student(tiny_model_dir, tmp_path / "s")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, base_args(tiny_model_dir, student, text_file, out, "--steps", "1", "--memory-budget",
                                          "1MiB"))  # fmt: skip
    assert r.exit_code == 3, r.output
    assert r.stderr.strip().startswith("error: --memory-budget:") and not out.exists()
    assert not Path(f"{out}.partial").exists()
    r = CliRunner().invoke(app, base_args(tiny_model_dir, student, text_file, out, "--steps", "1", "--memory-budget",
                                          "64GiB", "--json"))  # fmt: skip
    assert r.exit_code == 0, r.output


def test_report_to_tensorboard_and_summary_plot(tiny_model_dir, text_file, tmp_path):
    pytest.importorskip("tensorboard")
    student = make_pruned_student(tiny_model_dir, tmp_path / "s")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, base_args(tiny_model_dir, student, text_file, out, "--steps", "3", "--eval-every", "2",
                                          "--report-to", "tensorboard", "--json"))  # fmt: skip
    assert r.exit_code == 0, r.output
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and (out / "distill_summary.png").stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "train/kl", "eval/kl"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    r = CliRunner().invoke(app, base_args(tiny_model_dir, student, text_file, tmp_path / "o2", "--steps", "1",
                                          "--report-to", "wandb"))  # fmt: skip
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: --report-to:")
