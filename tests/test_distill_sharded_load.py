"""FSDP2 without full copies: each rank reads only its shards (`minitron.distill.sharded_load`).

In one process the meta-device loader must give exactly the model `from_pretrained` gives (every
parameter, tied weight and buffer, non-persistent ones included) for each family; under torchrun
(gloo, CPU, 2 ranks) `--fsdp` with sharded loading must train to the same bits as the former path
(`--fsdp-load full`: every rank loads the whole checkpoints, then shards), resumed or not, with the
resident teacher and with cached teacher logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_helpers import base_args, make_pruned_student, run_cli, subprocess_env, weights

from minitron.testing import make_tiny_model_dir, tiny_config, tiny_dense_config, tiny_hybrid_config

FAMILIES = {
    "nemotron_h": tiny_config,  # Mamba A_log / D / dt_bias, MoE experts stacked in the module, a persistent buffer
    "llama": lambda: tiny_dense_config("llama"),  # rotary inv_freq (non-persistent buffers), biases
    "qwen2": lambda: tiny_dense_config("qwen2"),  # tied embeddings (no lm_head in the files)
    "bamba": lambda: tiny_hybrid_config("bamba"),  # Mamba-2 hybrid with rotary
    "granitemoehybrid": lambda: tiny_hybrid_config("granitemoehybrid"),  # tied, multipliers
}
ARGS = ["--steps", "3", "--global-batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2", "--save-every", "2",
        "--json"]  # fmt: skip


def _everything(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())


def _tied_to_embedding(model) -> list[str]:
    emb = model.get_input_embeddings().weight
    return sorted(n for n, p in model.named_parameters(remove_duplicate=False) if p is emb)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_meta_load_equals_from_pretrained(family, tmp_path):
    from minitron.distill.sharded_load import load_sharded
    from minitron.models.checkpoint import load_model

    d = make_tiny_model_dir(tmp_path / family, cfg=FAMILIES[family]())
    for dtype in ("fp32", "bf16"):
        ref, got = load_model(d, dtype=dtype), load_sharded(d, dtype=dtype)
        a, b = _everything(ref), _everything(got)
        assert a.keys() == b.keys()
        assert any(not p.is_meta for p in b.values())
        for k in a:
            assert b[k].dtype == a[k].dtype and torch.equal(b[k], a[k]), (dtype, k)
        # tied weights are one tensor, as from_pretrained makes them
        assert _tied_to_embedding(got) == _tied_to_embedding(ref)
        assert not got.training
        if dtype == "fp32":  # saved, both keep the checkpoint's layout (key names, one tensor per expert)
            ref.save_pretrained(tmp_path / "ref")
            got.save_pretrained(tmp_path / "got")
            assert weights(tmp_path / "got").keys() == weights(tmp_path / "ref").keys() == weights(d).keys()
        ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(got(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_resolve_sources_names_what_is_missing_or_mismatched(tiny_model_dir):
    from minitron.distill.sharded_load import build_empty, resolve_sources
    from minitron.errors import CheckpointError
    from minitron.models.checkpoint import open_checkpoint

    ckpt = open_checkpoint(tiny_model_dir, require_weights=True)
    model = build_empty(tiny_model_dir, "fp32")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    src = resolve_sources(shapes, ckpt.tensors)
    stacked = [n for n, s in src.items() if s.stacked]
    assert stacked and all(".experts." in n and len(src[n].entries) == shapes[n][0] for n in stacked)
    assert {e.key for s in src.values() for e in s.entries} <= set(ckpt.tensors)
    name = "model.layers.0.mixer.A_log"
    with pytest.raises(CheckpointError, match="no checkpoint tensor for model.layers.0.mixer.A_log"):
        resolve_sources(shapes, {k: e for k, e in ckpt.tensors.items() if not k.endswith("layers.0.mixer.A_log")})
    with pytest.raises(CheckpointError, match="has shape"):
        resolve_sources({**shapes, name: (shapes[name][0] + 1,)}, ckpt.tensors)
    with pytest.raises(CheckpointError, match="experts"):
        resolve_sources(shapes, {k: e for k, e in ckpt.tensors.items() if ".experts.1." not in k})


# ---------------------------------------------------------------------- torchrun, 2 ranks
@pytest.fixture(scope="module")
def pair(tmp_path_factory, request) -> tuple[Path, Path]:
    """(teacher, student) directories of one family."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "nemotron_h":
        teacher = make_tiny_model_dir(root / "teacher")
        return teacher, make_pruned_student(teacher, root / "student")
    cfg = FAMILIES[request.param]()
    return make_tiny_model_dir(root / "teacher", cfg=cfg, seed=0), make_tiny_model_dir(root / "student", cfg=cfg, seed=1)


@pytest.fixture(scope="module")
def full_path_run(pair, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    r = run_cli(base_args(*pair, text_file, out, *ARGS, "--fsdp", "--fsdp-load", "full"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout)


def _assert_same_bits(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for f in ("config.json", "generation_config.json"):
        assert (a_dir / f).read_text() == (b_dir / f).read_text(), f


@pytest.mark.parametrize("pair", ["nemotron_h", "qwen2"], indirect=True)
def test_sharded_fsdp_load_trains_to_the_same_bits(pair, text_file, tmp_path, full_path_run):
    out = tmp_path / "sharded"
    r = run_cli(base_args(*pair, text_file, out, *ARGS, "--fsdp"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    doc, ref = json.loads(r.stdout), full_path_run[1]
    assert doc["world_size"] == 2 and doc["final_eval"] == ref["final_eval"] and doc["train"]["loss"] == ref["train"]["loss"]
    _assert_same_bits(full_path_run[0], out)
    before = weights(pair[1])
    assert weights(out).keys() == before.keys()  # a tied lm_head is not stored, as in the student's files
    assert any(not torch.equal(v, before[k]) for k, v in weights(out).items())  # it trained


@pytest.mark.parametrize("pair", ["qwen2"], indirect=True)
def test_sharded_fsdp_resume_after_sigkill(pair, text_file, tmp_path, full_path_run):
    """Rank 0 SIGKILLs itself right after the step-2 checkpoint; the rerun resumes (rank 0 alone reads the
    checkpoint and broadcasts it) and ends with the uninterrupted run's bits."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "minitron",
           *base_args(*pair, text_file, out, *ARGS, "--fsdp")]  # fmt: skip
    env = subprocess_env() | {"MINITRON_FAULT": "checkpoint-saved"}
    killed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode != 0 and not out.exists()
    assert (tmp_path / "run.partial" / "checkpoints" / "step-00000002.pt").is_file()
    r = run_cli(base_args(*pair, text_file, out, *ARGS, "--fsdp"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["resumed_from"] == 2
    _assert_same_bits(full_path_run[0], out)


@pytest.mark.parametrize("pair", ["nemotron_h"], indirect=True)
def test_sharded_fsdp_with_cached_teacher_logits(pair, text_file, tmp_path):
    cache = tmp_path / "cache"
    r = run_cli(["teacher-logits", str(pair[0]), "--data", str(text_file), "--out", str(cache), "--seq-len", "32",
                 "--top-k", "16"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    args = [*ARGS, "--fsdp", "--teacher-logits", str(cache)]
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    for out, extra in ((full, ["--fsdp-load", "full"]), (sharded, [])):
        r = run_cli(base_args(*pair, text_file, out, *args, *extra), torchrun=2)
        assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_bits(full, sharded)


def test_fsdp_load_is_checked(tiny_model_dir, text_file, tmp_path):
    r = run_cli(base_args(tiny_model_dir, tiny_model_dir, text_file, tmp_path / "o", "--steps", "1", "--fsdp-load", "half"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --fsdp-load:"), r.stderr
    assert not (tmp_path / "o").exists()


_ROOT_WORKER = """
import sys, torch
from torch.distributed.tensor import DTensor
from minitron import distributed as dist
from minitron.distill.parallel import fsdp_wrap
from minitron.distill.sharded_load import load_sharded
with dist.session("cpu"):
    out = []
    for frozen in (False, True):
        m = load_sharded(sys.argv[1], dtype="fp32", wrap=lambda x: fsdp_wrap(x, "cpu", frozen=frozen))
        with torch.no_grad():
            m(input_ids=torch.randint(0, 300, (1, 16)))
        out.append(isinstance(m.lm_head.weight, DTensor))
    if dist.is_main():
        print(out)
"""


@pytest.mark.parametrize("pair", ["qwen2"], indirect=True)
def test_frozen_teacher_root_is_resharded_after_forward(pair, tmp_path):
    """FSDP2 keeps a root unit gathered after forward (for the backward); the teacher has none."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_ROOT_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(pair[0])]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[False, True]"  # default: still gathered; frozen: sharded again
