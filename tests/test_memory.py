"""Memory model: the paper's figures, and the bytes transformers' own cache really holds."""

from __future__ import annotations

import pytest
import torch
from conftest import REF_9B, REF_12B
from family_helpers import cache_bytes

from minitron.errors import InputError
from minitron.memory import GiB, estimate, make_budget, max_sequences, parse_size
from minitron.models import Architecture
from minitron.models.compat import output_cache
from minitron.testing import build_model, tiny_config


def test_nano2_9b_fits_a10g_at_128k():
    arch = Architecture.from_path(REF_9B)
    est = estimate(arch, context_length=131072, batch_size=1, dtype="bf16", state_dtype="bf16")
    assert est.weights_bytes == 8_888_227_328 * 2
    assert round(est.weights_bytes / GiB, 2) == 16.56
    assert est.kv_cache_bytes == 4 * 2 * 8 * 128 * 131072 * 2
    # The paper's three terms (weights + KV + state) are 18.6 GiB; vLLM adds a 2048-token prefill chunk
    # (0.28 GiB: the Mamba in_proj/conv/scan tensors) and its 256-row fp32 logits buffer (0.125 GiB).
    paper = est.weights_bytes + est.kv_cache_bytes + est.mamba_state_bytes
    assert abs(paper / GiB - 18.6) < 0.05
    assert est.logits_bytes == 256 * 131072 * 4
    assert est.total_bytes == paper + est.prefill_activation_bytes + est.logits_bytes
    assert 0.25 < est.prefill_activation_bytes / GiB < 0.3
    assert abs(est.mamba_state_bytes / GiB - 0.07) < 0.005
    budget = make_budget(gpu="a10g", headroom=0.05, reserve_gib=1.3)
    assert abs(budget.budget_bytes / GiB - 19.66) < 0.005
    assert budget.fits(est)
    # fp32 SSM state (the config's mamba_ssm_cache_dtype): about 0.13 GiB.
    est32 = estimate(arch, context_length=131072, dtype="bf16")
    assert est32.state_dtype == "fp32" and abs(est32.mamba_state_bytes / GiB - 0.13) < 0.01


def test_nano2_12b_does_not_fit_a10g():
    arch = Architecture.from_path(REF_12B)
    est = estimate(arch, context_length=131072, dtype="bf16", state_dtype="bf16")
    assert round(est.weights_bytes / GiB, 2) == 22.93
    assert est.kv_cache_bytes == 6 * 2 * 8 * 128 * 131072 * 2  # 3.0 GiB
    assert abs((est.total_bytes - est.prefill_activation_bytes - est.logits_bytes) / GiB - 26.0) < 0.1
    assert not make_budget(gpu="a10g", headroom=0.05, reserve_gib=1.3).fits(est)


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_estimate_equals_transformers_cache_after_forward(dtype, torch_dtype):
    cfg = tiny_config()
    arch = Architecture.from_config(cfg)
    model = build_model(cfg).to(torch_dtype)
    batch, ctx = 3, 41
    with torch.no_grad():
        out = model(torch.randint(3, 300, (batch, ctx)), use_cache=True)
    kv, state = cache_bytes(output_cache(out))
    est = estimate(arch, context_length=ctx, batch_size=batch, dtype=dtype, engine="hf")  # transformers keeps conv_kernel columns
    assert est.kv_cache_bytes == kv
    assert est.mamba_state_bytes == state
    # The weight term against the model's real tensors.
    assert est.weights_bytes == sum(p.numel() * p.element_size() for p in model.parameters())


def test_budgets_and_sizes():
    assert parse_size("19.66GiB") == int(19.66 * GiB)
    assert parse_size("20GB") == 20 * 10**9
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("21474836480") == 21474836480
    assert make_budget(memory_budget="10GiB").budget_bytes == 10 * GiB
    assert make_budget() is None
    with pytest.raises(InputError, match="--gpu"):
        make_budget(gpu="tpu-v9")
    with pytest.raises(InputError, match="--headroom"):
        make_budget(gpu="a10g", headroom=1.5)
    with pytest.raises(InputError, match="--memory-budget"):
        parse_size("lots")
    with pytest.raises(InputError, match="not both"):
        make_budget(gpu="a10g", memory_budget="1GiB")


def test_state_dtype_override_and_errors():
    arch = Architecture.from_config(tiny_config())
    a = estimate(arch, context_length=10, state_dtype="bf16")
    b = estimate(arch, context_length=10, state_dtype="fp32")
    assert b.mamba_ssm_bytes == 2 * a.mamba_ssm_bytes
    with pytest.raises(InputError, match="--state-dtype"):
        estimate(arch, state_dtype="int3")
    with pytest.raises(InputError, match="--sequences"):
        estimate(arch, batch_size=0)


def test_engines_differ_where_they_hold_different_things():
    arch = Architecture.from_path(REF_9B)
    v = estimate(arch, context_length=131072, dtype="bf16", engine="vllm")
    h = estimate(arch, context_length=131072, dtype="bf16", engine="hf")
    n_mamba, conv_dim = len(arch.mamba_layers()), arch.mamba_conv_dim
    assert (v.conv_window, h.conv_window) == (arch.conv_kernel - 1, arch.conv_kernel)
    assert h.mamba_conv_bytes - v.mamba_conv_bytes == n_mamba * conv_dim * 2  # one bf16 column per channel
    assert v.kv_cache_bytes == h.kv_cache_bytes and v.weights_bytes == h.weights_bytes
    # hf prefills the whole 128k prompt in one forward: the 9B's Mamba in_proj output alone is ~5.9 GB
    assert (v.prefill_tokens, h.prefill_tokens) == (2048, 131072)
    assert h.prefill_activation_bytes > 131072 * arch.mamba_in_proj_dim * 2 > 5.9e9
    assert estimate(arch, context_length=131072, prefill_chunk=512).prefill_activation_bytes < v.prefill_activation_bytes
    assert (v.logits_rows, h.logits_rows) == (256, 1)


def test_fp8_weights_and_kv():
    arch = Architecture.from_path(REF_9B)
    bf = estimate(arch, context_length=131072)
    w8 = estimate(arch, context_length=131072, dtype="fp8")
    kv8 = estimate(arch, context_length=131072, kv_dtype="fp8")
    assert w8.weights_bytes * 2 == bf.weights_bytes and w8.kv_cache_bytes == bf.kv_cache_bytes  # KV stays bf16
    assert w8.mamba_state_bytes == bf.mamba_state_bytes  # activations (and the conv state) stay bf16
    assert kv8.kv_cache_bytes * 2 == bf.kv_cache_bytes and kv8.weights_bytes == bf.weights_bytes
    with pytest.raises(InputError, match="--kv-dtype"):
        estimate(arch, kv_dtype="int4")
    with pytest.raises(InputError, match="--state-dtype"):
        estimate(arch, state_dtype="fp8")


def test_max_sequences_and_engine_budget_defaults():
    arch = Architecture.from_path(REF_9B)
    a10g = make_budget(gpu="a10g")  # vllm: 0.92 of the GPU minus the CUDA context
    assert a10g.headroom == 0.08 and a10g.reserve_bytes == GiB
    assert make_budget(gpu="a10g", engine="hf").headroom == 0.0
    assert make_budget(memory_budget="10GiB").budget_bytes == 10 * GiB  # a size is the budget itself
    one = estimate(arch, context_length=131072)
    four = estimate(arch, context_length=131072, batch_size=4)
    assert four.per_sequence_bytes == one.per_sequence_bytes and four.fixed_bytes == one.fixed_bytes
    assert four.total_bytes == one.fixed_bytes + 4 * one.per_sequence_bytes
    budget = one.fixed_bytes + 3 * one.per_sequence_bytes + 1
    assert max_sequences(one, budget) == 3 and max_sequences(one, one.fixed_bytes - 1) == 0
    h80 = make_budget(gpu="h100-80gb")
    n = max_sequences(one, h80.budget_bytes)
    assert estimate(arch, context_length=131072, batch_size=n).total_bytes <= h80.budget_bytes
    assert estimate(arch, context_length=131072, batch_size=n + 1).total_bytes > h80.budget_bytes
    with pytest.raises(InputError, match="--engine"):
        estimate(arch, engine="trt")
    with pytest.raises(InputError, match="--prefill-chunk"):
        estimate(arch, prefill_chunk=0)
