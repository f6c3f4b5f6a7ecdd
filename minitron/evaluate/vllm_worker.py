"""Run one model in vLLM and report what it did: greedy tokens, generation throughput, cache accounting.

This file is executed by the Python of a separate vLLM environment (`--vllm-python`), never imported
by minitron: it may import only the standard library and vLLM, which pins its own torch and
transformers. `minitron.evaluate.vllm_check` writes the request and reads the result:

    python vllm_worker.py REQUEST.json RESULT.json

REQUEST: {"model", "dtype", "max_model_len", "kv_cache_dtype", "enforce_eager", "seed",
          "greedy": {"prompts": [[ids]], "max_tokens"},
          "throughput": {"prompts": [[ids]], "gen_len", "runs", "warmup"} | null}
RESULT:  {"vllm_version", "load_seconds", "greedy": [[ids]], "throughput": {...} | null, "cache": {...}}

Prompts are token ids (the parent tokenised them), so both engines see the same input. Every request
ignores EOS, so each produces exactly the asked number of tokens. The engine core runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set by the parent) so that its KV-cache configuration can be read.
"""

import json
import statistics
import sys
import time


def _cache_report(llm, max_model_len: int) -> dict:
    """vLLM's own accounting: the per-layer cache specs, the pool, and the concurrency it derives."""
    from vllm.v1.core.kv_cache_utils import get_max_concurrency_for_kv_cache_config

    core = llm.llm_engine.engine_core.engine_core  # InprocClient -> EngineCore
    kv = core.scheduler.kv_cache_config
    vcfg = core.vllm_config
    layers = []
    for group in kv.kv_cache_groups:
        spec = group.kv_cache_spec
        kind = type(spec).__name__
        for name in group.layer_names:
            entry = {"layer": name, "spec": kind, "block_size": spec.block_size,
                     "page_size_bytes": spec.page_size_bytes}
            if hasattr(spec, "shapes"):  # MambaSpec: one state per sequence, its real (unpadded) size
                entry["shapes"] = [list(s) for s in spec.shapes]
                entry["dtypes"] = [str(d).removeprefix("torch.") for d in spec.dtypes]
                entry["state_bytes"] = spec.real_page_size_bytes
            else:  # attention: K and V of every token
                entry["num_kv_heads"] = spec.num_kv_heads
                entry["head_size"] = spec.head_size
                entry["dtype"] = str(spec.dtype).removeprefix("torch.")
                entry["bytes_per_token"] = spec.page_size_bytes // spec.block_size
            layers.append(entry)
    concurrency = get_max_concurrency_for_kv_cache_config(vcfg, kv)
    cc = vcfg.cache_config
    pool = cc.kv_cache_memory_bytes
    return {
        "layers": layers,
        "num_blocks": kv.num_blocks,
        "block_size": cc.block_size,
        "pool_bytes": pool,
        "mamba_cache_mode": cc.mamba_cache_mode,
        "max_model_len": max_model_len,
        "max_concurrency": concurrency,  # sequences of max_model_len tokens the pool holds, vLLM's figure
        "allocated_bytes_per_sequence": int(pool / concurrency) if pool and concurrency else None,
    }


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as f:
        req = json.load(f)
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=req["model"], tokenizer=req["model"], dtype=req["dtype"], max_model_len=req["max_model_len"],
              kv_cache_dtype=req.get("kv_cache_dtype", "auto"), enforce_eager=req.get("enforce_eager", False),
              seed=req.get("seed", 0), disable_log_stats=True)  # fmt: skip
    load_seconds = time.perf_counter() - t0

    def generate(prompts, max_tokens):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    g = req["greedy"]
    greedy = generate(g["prompts"], g["max_tokens"])
    throughput = None
    t = req.get("throughput")
    if t:
        for _ in range(t.get("warmup", 1)):
            generate(t["prompts"], t["gen_len"])
        times, cpu = [], []
        for _ in range(t["runs"]):
            t1, c1 = time.perf_counter(), time.process_time()
            out = generate(t["prompts"], t["gen_len"])
            times.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c1)  # this process's CPU time: steadier than wall time on a busy machine
            assert all(len(o) == t["gen_len"] for o in out)
        med = statistics.median(times)
        n = len(t["prompts"])
        throughput = {"generate_seconds": med, "seconds": times, "cpu_seconds": cpu,
                      "generate_tokens_per_second": n * t["gen_len"] / med,
                      "batch_size": n, "prompt_len": len(t["prompts"][0]), "gen_len": t["gen_len"],
                      "runs": t["runs"]}  # fmt: skip
    result = {"vllm_version": vllm.__version__, "load_seconds": load_seconds, "greedy": greedy,
              "throughput": throughput, "cache": _cache_report(llm, req["max_model_len"])}  # fmt: skip
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":  # vLLM spawns processes: nothing may run on import
    main(sys.argv[1], sys.argv[2])
