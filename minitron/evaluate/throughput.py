"""Prefill and decode throughput through transformers' cache path, and the measured peak GPU memory.

One run: a prefill of `batch_size` x `prompt_len` random tokens (`use_cache=True`, only the last
position's logits), then `gen_len` greedy decode steps of one token each, every step reusing the
model's own cache (KV for attention layers, conv + SSM state for Mamba layers; the
mamba-ssm / causal-conv1d kernels are used when installed). Times are wall-clock with the device
synchronised; the figure is the median over `runs` runs after `warmup` unmeasured ones.

    prefill tokens/s = batch_size x prompt_len / prefill time
    decode tokens/s  = batch_size x gen_len / decode time       (tokens produced per second)

The prompt tokens come from a seeded generator, so every model sees the same input. On CUDA the
peak allocated memory of the measured runs is reported beside the memory model's figure for the same
shape (`minitron.memory.estimate` at prompt_len + gen_len tokens); memory that other objects held on
the device before the measurement (a teacher kept loaded) is subtracted, so the peak is this
model's weights + cache + activations.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from minitron.errors import InputError
from minitron.models.compat import cache_kwargs, output_cache
from minitron.options import option


@dataclass(frozen=True)
class ThroughputSettings:
    """`eval --throughput`: each field with a flag is that command's option."""

    prompt_len: int = option("--prompt-len", default=512, help="Prompt tokens per sequence (throughput).")
    gen_len: int = option("--gen-len", default=128, help="Decode steps after the prompt (throughput).")
    batch_size: int = option("--throughput-batch-size", default=1, help="Sequences decoded at once (throughput).")
    runs: int = option("--throughput-runs", default=3, help="Measured runs; the median is reported.")
    warmup: int = 1
    seed: int = 0

    def validate(self) -> ThroughputSettings:
        for flag, v, lo in (("--prompt-len", self.prompt_len, 1), ("--gen-len", self.gen_len, 1),
                            ("--throughput-batch-size", self.batch_size, 1), ("--throughput-runs", self.runs, 1),
                            ("--throughput-warmup", self.warmup, 0)):  # fmt: skip
            if v < lo:
                raise InputError(f"must be >= {lo}, got {v}", flag=flag)
        return self


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt_ids(settings: ThroughputSettings, vocab_size: int) -> torch.Tensor:
    """The [batch, prompt_len] prompt every model is measured on (seeded; ids 3.. to avoid special tokens)."""
    g = torch.Generator().manual_seed(settings.seed)
    low = 3 if vocab_size > 3 else 0
    return torch.randint(low, vocab_size, (settings.batch_size, settings.prompt_len), generator=g)


@torch.inference_mode()
def run_once(model, ids: torch.Tensor, gen_len: int) -> tuple[float, float, torch.Tensor]:
    """(prefill seconds, decode seconds, generated ids [B, gen_len]) of one prefill of `ids` [B, P] and
    `gen_len` greedy steps, each step feeding one token and the model's cache."""
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1:].argmax(-1)  # [B, 1]
    cache = output_cache(out)
    _sync(device)
    t1 = time.perf_counter()
    generated = []
    for _ in range(gen_len):
        generated.append(nxt)
        out = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, cache))
        cache = output_cache(out)
        nxt = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, torch.cat(generated, dim=1)


def measure(model, settings: ThroughputSettings, *, memory_model_bytes: int | None = None) -> dict:
    """Median prefill and decode tokens/s of `model` (on its device) under `settings`; peak memory on CUDA."""
    settings.validate()
    device = next(model.parameters()).device
    ids = prompt_ids(settings, model.config.vocab_size).to(device)
    for _ in range(settings.warmup):
        run_once(model, ids, settings.gen_len)
    other = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        # Memory held by other objects on the device (the teacher kept loaded by `eval`) is not this model's.
        own = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        other = max(0, torch.cuda.memory_allocated(device) - own)
    prefill, decode = [], []
    for _ in range(settings.runs):
        p, d, _ = run_once(model, ids, settings.gen_len)
        prefill.append(p)
        decode.append(d)
    b = settings.batch_size
    p_med, d_med = statistics.median(prefill), statistics.median(decode)
    doc = {
        "prefill_tokens_per_second": b * settings.prompt_len / p_med,
        "decode_tokens_per_second": b * settings.gen_len / d_med,
        "prefill_seconds": p_med,
        "decode_seconds": d_med,
        "prompt_len": settings.prompt_len,
        "gen_len": settings.gen_len,
        "batch_size": b,
        "runs": settings.runs,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) - other
        if device.type == "cuda"
        else None,
        "memory_model_bytes": memory_model_bytes,
    }
    return doc
