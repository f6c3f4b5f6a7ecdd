"""`minitron run` is resumable: killed during distillation and run again, it keeps the finished
stages, resumes the distillation inside its run and ends bit-for-bit where an uninterrupted run
ends; `--until` stops after a stage, and a stage run by hand with the command `--check` prints (say
distill under torchrun) is taken as done."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from distill_helpers import subprocess_env
from huggingface_hub import ModelCard
from safetensors.torch import load_file


def _recipe(tmp_path, teacher, text, *, eval_stage=True) -> str:
    p = tmp_path / "recipe.yaml"
    body = (f"model: {teacher}\n"
            f"score: {{data: [{text}], samples: 4, seq-len: 32, device: cpu, dtype: fp32, streaming: false}}\n"
            "prune: {hidden-size: 48, num-layers: 7}\n"
            f"distill: {{data: [{text}], steps: 6, seq-len: 32, micro-batch-size: 2, save-every: 2, lr: 3.0e-4,\n"
            "          eval-samples: 2, device: cpu, dtype: fp32}\n")  # fmt: skip
    if eval_stage:
        body += f"eval: {{data: [{text}], seq-len: 32, samples: 4, device: cpu, dtype: fp32}}\n"
    p.write_text(body)
    return str(p)


def _run(args, *, fault=None, cwd=None):
    env = subprocess_env()
    env.pop("MINITRON_FAULT", None)
    if fault:
        env["MINITRON_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "minitron", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)  # fmt: skip


def _weights(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.slow
def test_killed_during_distillation_resumes_to_the_same_result(tiny_model_dir, text_file, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, text_file)
    a, b = tmp_path / "a", tmp_path / "b"
    r = _run(["run", recipe, "--out", a])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(["run", recipe, "--out", b], fault="checkpoint-saved")
    assert r.returncode == -9, r.stderr[-3000:]  # SIGKILL right after the first distillation checkpoint
    done = json.loads((b / "run.json").read_text())["stages"]
    assert set(done) == {"score", "prune"} and not (b / "distilled").exists()
    r = _run(["run", recipe, "--out", b])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[1/4] score: done in an earlier run, kept" in r.stderr and "prune: done in an earlier run" in r.stderr
    assert "resuming from step 2" in r.stderr
    wa, wb = _weights(a / "distilled"), _weights(b / "distilled")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    # The root of the tree has a card naming the base model, the stages and the figures of eval.
    card = ModelCard.load(b / "README.md")
    assert card.data.base_model == tiny_model_dir.name and card.data.library_name == "transformers"
    assert "| eval |" in card.text and "KL to teacher" in card.text and "hf upload" in card.text
    assert "publish the result: hf upload" in r.stdout


@pytest.mark.slow
def test_until_then_a_stage_run_by_hand_is_taken(tiny_model_dir, text_file, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, text_file)
    out = tmp_path / "run"
    r = _run(["run", recipe, "--out", out, "--until", "prune"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "pruned" / "config.json").is_file() and not (out / "distilled").exists()
    check = json.loads(_run(["run", recipe, "--out", out, "--check", "--json"]).stdout)
    argv = check["stages"]["distill"]
    assert argv[:2] == ["minitron", "distill"] and "--json" not in argv
    r = _run(argv[1:])  # what a user runs by hand (under torchrun, for a large model)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(["run", recipe, "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "distill: run by hand with this recipe's command, taken" in r.stderr
    assert (out / "eval" / "eval.json").is_file()
    # A hand run with other options is not taken: the recipe's options decide.
    assert json.loads((out / "run.json").read_text())["stages"]["distill"]["adopted"] is True
