"""The README's Quick start, run as written: what a new user types first must work.

The install steps (`python3 -m venv`, `. .venv/bin/activate`, `pip install`) are skipped inside the
suite (the suite runs in that environment already); every command after them runs exactly as the
README spells it, in a fresh working directory, through the installed `minitron` console script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ("python3 -m venv", "python -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install")


def quick_start_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    section = section[: section.index("\n## ", 3)]
    return [b.strip() for b in re.findall(r"```(?:bash|sh)\n(.*?)```", section, re.S)]


def commands_after_install(block: str) -> list[str]:
    steps = [s.strip() for s in block.split("&&")]
    return [s for s in steps if not s.startswith(INSTALL)]


def test_quick_start_has_the_two_commands_and_ci_runs_the_second():
    blocks = quick_start_blocks()
    assert len(blocks) == 2
    assert commands_after_install(blocks[0]) == ["minitron demo"]
    assert commands_after_install(blocks[1]) == ["python -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and 'pip install -q -e ".[dev]"' in ci and "torch==2.13.0" in ci


@pytest.mark.slow
def test_first_command_runs_the_demo_as_written(tmp_path):
    """`minitron demo`, no flags, in an empty directory: the whole pipeline, exit 0, results in ./minitron-demo."""
    import torch
    from transformers import AutoModelForCausalLM

    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in commands_after_install(quick_start_blocks()[0]):
        r = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    assert "Usage:" not in r.stdout + r.stderr
    out = tmp_path / "minitron-demo"
    doc = json.loads((out / "minitron.json").read_text())["result"]
    assert [m["name"] for m in doc["models"]] == ["teacher", "pruned", "distilled"]
    for m in doc["models"]:
        path = Path(m["path"]) if Path(m["path"]).is_absolute() else tmp_path / m["path"]
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # stock transformers loads each
    teacher, pruned, distilled = doc["models"]
    assert pruned["memory_bytes"] <= doc["budget_bytes"] < teacher["memory_bytes"]
    assert pruned["params"] == distilled["params"] < 0.65 * teacher["params"]
    assert distilled["loss"] < pruned["loss"] and distilled["kl"] < pruned["kl"]
    assert teacher["kl"] == pytest.approx(0.0, abs=1e-6)
    assert set(doc["stage_seconds"]) == {"inspect", "score", "prune", "distill", "eval"}
    assert (out / "scores" / "scores.safetensors").is_file()
    # The table reached stdout with every column (stdout is a pipe here: nothing is cut to 80 columns).
    assert "KL to teacher" in r.stdout and "decode tok/s" in r.stdout and "…" not in r.stdout
