"""Check a model in vLLM: greedy tokens against transformers', generation throughput, vLLM's cache bytes.

vLLM pins its own torch and transformers, so it lives in a separate virtual environment (docs/serving.md);
its Python is given by `--vllm-python` or `MINITRON_VLLM_PYTHON`. Each model runs in a fresh subprocess of
that Python (`vllm_worker.py`, which imports only vLLM and the standard library) and sends back JSON.

    greedy      the same prompt token ids through transformers (cached greedy decode) and vLLM
                (temperature 0, EOS ignored): equal token for token, or the first position that differs
    throughput  generated tokens / wall time of one batch (prefill included), median of runs,
                the same prompts in both engines
    cache       vLLM's per-layer cache specs: K+V bytes per token of each attention layer and the real
                (unpadded) state bytes of each Mamba layer, summed for one sequence of `max_model_len`
                tokens; minitron's `--engine vllm` figure must equal it. vLLM's own pool allocation per
                sequence (pages, padding to one page size, prefix-cache checkpoints) is reported beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from minitron.errors import InputError, MinitronError
from minitron.options import option

PYTHON_ENV = "MINITRON_VLLM_PYTHON"
WORKER = Path(__file__).with_name("vllm_worker.py")
# Prompts of the greedy check: plain text, tokenised once with the model's tokenizer.
PROMPTS = (
    "The os module provides a portable way of using",
    "A list comprehension consists of brackets containing",
    "def fibonacci(n):\n    ",
    "Exceptions are raised when",
)
_TORCH_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class VllmError(MinitronError):
    """vLLM could not load or run a model (the model does not serve): one line, the log kept."""

    exit_code = 1


@dataclass(frozen=True)
class VllmSettings:
    """`eval --vllm`: each field with a flag is that command's option."""

    python: str | None = option("--vllm-python", default=None,  # None: $MINITRON_VLLM_PYTHON
                                help="Python of the vLLM environment (default: $MINITRON_VLLM_PYTHON).")
    greedy_tokens: int = option("--vllm-tokens", default=24, help="Greedy tokens compared per prompt (--vllm).")
    enforce_eager: bool = option("--vllm-eager", default=False,  # skips vLLM's torch.compile warm-up
                                 help="vLLM without torch.compile (faster load, slower decode).")
    kv_cache_dtype: str = "auto"
    timeout_s: float = 1800.0

    def validate(self) -> VllmSettings:
        if self.greedy_tokens < 1:
            raise InputError(f"must be >= 1, got {self.greedy_tokens}", flag="--vllm-tokens")
        return self


def find_python(explicit: str | None = None) -> Path:
    """The vLLM environment's Python: `--vllm-python`, else $MINITRON_VLLM_PYTHON, else this Python when it
    imports vllm itself (the `vllm` extra on a GPU machine); checked to import vllm."""
    import importlib.util
    import sys

    given = explicit or os.environ.get(PYTHON_ENV)
    if not given and importlib.util.find_spec("vllm") is not None:
        given = sys.executable
    if not given:
        raise InputError(f"no vLLM environment: give --vllm-python PATH or set {PYTHON_ENV} "
                         "(install: docs/serving.md)", flag="--vllm-python")  # fmt: skip
    path = Path(given).expanduser()
    found = path if path.is_file() else shutil.which(given)
    if not found:
        raise InputError(f"{given} is not a Python executable", flag="--vllm-python")
    probe = subprocess.run([str(found), "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    if probe.stdout.strip() != "True":
        raise InputError(f"{found} cannot import vllm (install: docs/serving.md)", flag="--vllm-python")
    return Path(found)


def worker_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV pool on CPU (its default is 4 GiB)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in the worker: its cache config is readable
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def run_worker(python: Path, request: dict, *, timeout_s: float) -> dict:
    """Run `vllm_worker.py` on `request` in the vLLM environment; its result, or VllmError with the log's tail."""
    with tempfile.TemporaryDirectory(prefix="minitron-vllm-") as tmp:
        req, res, logf = Path(tmp) / "request.json", Path(tmp) / "result.json", Path(tmp) / "vllm.log"
        req.write_text(json.dumps(request))
        worker = Path(tmp) / WORKER.name  # run from a directory of its own: nothing beside it shadows vllm
        shutil.copy(WORKER, worker)
        with open(logf, "w") as lf:
            try:
                proc = subprocess.run([str(python), str(worker), str(req), str(res)], stdout=lf, stderr=subprocess.STDOUT,
                                      env=worker_env(), cwd=tmp, timeout=timeout_s)  # fmt: skip
            except subprocess.TimeoutExpired:
                proc = None
        if proc is None or proc.returncode != 0 or not res.is_file():
            lines = [ln.strip() for ln in logf.read_text(errors="replace").splitlines() if ln.strip()]
            kept = Path(tempfile.gettempdir()) / f"minitron-vllm-{int(time.time())}.log"
            shutil.copy(logf, kept)
            why = "timed out" if proc is None else f"exit {proc.returncode}"
            last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
            raise VllmError(f"vLLM failed on {request['model']} ({why}): {last[:300]} (log: {kept})")
        return json.loads(res.read_text())


def compare_greedy(hf: list[list[int]], vllm: list[list[int]]) -> dict:
    """Token-for-token agreement of the two engines' greedy continuations, prompt by prompt."""
    per = []
    for a, b in zip(hf, vllm, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        per.append({"equal": first is None, "first_mismatch": first, "tokens": len(a)})
    return {"equal": all(p["equal"] for p in per), "prompts": len(per),
            "prompts_equal": sum(p["equal"] for p in per), "per_prompt": per}  # fmt: skip


def vllm_state_bytes(cache: dict, context: int) -> dict:
    """KV + state bytes of one sequence of `context` tokens from vLLM's per-layer specs (unpadded)."""
    kv = sum(x["bytes_per_token"] * context for x in cache["layers"] if "bytes_per_token" in x)
    state = sum(x["state_bytes"] for x in cache["layers"] if "state_bytes" in x)
    return {"kv_cache_bytes": kv, "mamba_state_bytes": state, "total_bytes": kv + state}


def request(model_path: Path, *, dtype: str, max_model_len: int, greedy_prompts: list[list[int]],
            settings: VllmSettings, throughput_prompts: list[list[int]] | None, gen_len: int, runs: int,
            warmup: int, seed: int) -> dict:  # fmt: skip
    if dtype not in _TORCH_DTYPE:
        raise InputError(f"vLLM runs bf16, fp16 or fp32, got {dtype}", flag="--dtype")
    req = {"model": str(Path(model_path).resolve()), "dtype": _TORCH_DTYPE[dtype], "max_model_len": max_model_len,
           "kv_cache_dtype": settings.kv_cache_dtype, "enforce_eager": settings.enforce_eager, "seed": seed,
           "greedy": {"prompts": greedy_prompts, "max_tokens": settings.greedy_tokens}, "throughput": None}  # fmt: skip
    if throughput_prompts is not None:
        req["throughput"] = {"prompts": throughput_prompts, "gen_len": gen_len, "runs": runs, "warmup": warmup}
    return req


def hf_greedy(model, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (one at a time: no padding), through its cache."""
    import torch

    from minitron.evaluate.throughput import run_once

    device = next(model.parameters()).device
    return [run_once(model, torch.tensor([p], device=device), tokens)[2][0].tolist() for p in prompts]


def check_model(model, tokenizer, arch, path: Path, *, settings: VllmSettings, python: Path, dtype: str,
                throughput_settings, hf_throughput: dict | None, log=lambda m: None) -> dict:  # fmt: skip
    """The `vllm` entry of one `eval` row: greedy agreement, throughput beside transformers', cache bytes."""
    from minitron.evaluate.throughput import prompt_ids
    from minitron.memory import estimate

    s = throughput_settings
    greedy_prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    max_len = max(max(len(p) for p in greedy_prompts) + settings.greedy_tokens, s.prompt_len + s.gen_len)
    hf_tokens = hf_greedy(model, greedy_prompts, settings.greedy_tokens)
    tp_prompts = prompt_ids(s, arch.vocab_size).tolist()
    log(f"vLLM: loading {path}")
    out = run_worker(python, request(path, dtype=dtype, max_model_len=max_len, greedy_prompts=greedy_prompts,
                                     settings=settings, throughput_prompts=tp_prompts, gen_len=s.gen_len,
                                     runs=s.runs, warmup=s.warmup, seed=s.seed), timeout_s=settings.timeout_s)  # fmt: skip
    ours = estimate(arch, context_length=max_len, batch_size=1, dtype=dtype, engine="vllm",
                    kv_dtype=None if settings.kv_cache_dtype == "auto" else settings.kv_cache_dtype)
    theirs = vllm_state_bytes(out["cache"], max_len)
    cache = dict(out["cache"], context_length=max_len, vllm_per_sequence=theirs,
                 memory_model_per_sequence={"kv_cache_bytes": ours.kv_cache_bytes,
                                            "mamba_state_bytes": ours.mamba_state_bytes,
                                            "total_bytes": ours.per_sequence_bytes},
                 equal=theirs["total_bytes"] == ours.per_sequence_bytes)  # fmt: skip
    tp = dict(out["throughput"] or {})
    if hf_throughput:
        hf_s = hf_throughput["prefill_seconds"] + hf_throughput["decode_seconds"]
        tp["hf_generate_tokens_per_second"] = hf_throughput["batch_size"] * hf_throughput["gen_len"] / hf_s
    return {"version": out["vllm_version"], "load_seconds": out["load_seconds"], "dtype": dtype,
            "greedy": compare_greedy(hf_tokens, out["greedy"]) | {"tokens": settings.greedy_tokens},
            "throughput": tp or None, "cache": cache}  # fmt: skip
