"""Write a random-weight Nemotron-H checkpoint of any config, sharded like the published ones.

The published Nemotron Nano 2 checkpoints are bf16 safetensors shards of at most ~5 GB with
`backbone.`-prefixed names, per-expert MoE tensors and a `model.safetensors.index.json`. This
script writes the same layout for any `nemotron_h` config (a directory, a config.json, or a
bundled name such as `nemotron-nano-12b-v2-base`), streaming tensor by tensor: each shard's header
is computed from the config first, then the data is written from a small pool of random values
(64 MiB by default), so memory stays flat whatever the model size and a 12B checkpoint (~25 GB)
is written at disk speed.

Values: norms 1, `D` 1, `A_log` log(1..H), every other tensor a slice of N(0, 0.02) noise taken at
a per-tensor offset of the pool (tensors differ; the model runs and produces finite logits).

    python benchmarks/make_synthetic_checkpoint.py nemotron-nano-12b-v2-base .bench/synthetic-12b
    python benchmarks/make_synthetic_checkpoint.py CONFIG_DIR OUT --max-shard-size 200MB --set hidden_size=1024

Library use: `write_synthetic_checkpoint(cfg_dict, out_dir, ...)` (import this file by path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

TORCH_DTYPE_NAME = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def plan_shards(entries: list[tuple[str, tuple[int, ...]]], itemsize: int, max_shard_bytes: int):
    """Split `(name, shape)` entries, in order, into shards of at most `max_shard_bytes` (a tensor
    larger than that gets a shard of its own)."""
    shards, cur, cur_bytes = [], [], 0
    for name, shape in entries:
        n = math.prod(shape) * itemsize
        if cur and cur_bytes + n > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape))
        cur_bytes += n
    if cur:
        shards.append(cur)
    return shards


def safetensors_header(tensors: list[tuple[str, tuple[int, ...]]], dtype_code: str, itemsize: int) -> bytes:
    """The 8-byte length + JSON header (space-padded to 8 bytes) of a shard holding `tensors` in order."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = math.prod(shape) * itemsize
        header[name] = {"dtype": dtype_code, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _special(canonical: str, shape, torch_dtype):
    """Explicit values for the tensors that should not be noise (small ones only), else None."""
    import torch

    if canonical.endswith("norm.weight") or canonical.endswith("norm_f.weight") or canonical.endswith("mixer.D"):
        return torch.ones(shape, dtype=torch_dtype)
    if canonical.endswith("mixer.A_log"):
        return torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32)).to(torch_dtype)
    if canonical.endswith("e_score_correction_bias"):
        return torch.zeros(shape, dtype=torch_dtype)
    return None


def write_synthetic_checkpoint(
    cfg: dict,
    out: str | Path,
    *,
    dtype: str = "bf16",
    max_shard_bytes: int = 5 * 10**9,
    seed: int = 0,
    pool_mib: int = 64,
    prefix: str = "backbone.",
    progress: bool = False,
) -> dict:
    """Write config.json, generation_config.json, shards and the index into `out`; return a summary."""
    import torch

    from minitron.dtypes import DTYPE_BYTES, safetensors_code, torch_dtype
    from minitron.models.architecture import Architecture
    from minitron.models.tensors import checkpoint_name, model_specs

    arch = Architecture.from_config(cfg)
    tdt = torch_dtype(dtype)
    itemsize, code = DTYPE_BYTES[dtype], safetensors_code(torch_dtype(dtype))
    g = torch.Generator().manual_seed(seed)
    pool_elems = pool_mib * 2**20 // itemsize
    pool = (0.02 * torch.randn(pool_elems, generator=g)).to(tdt)
    pool_bytes = memoryview(pool.view(torch.uint8).numpy()).cast("B")
    n_pool = len(pool_bytes)

    specs = model_specs(arch, layout="checkpoint")
    entries = [(checkpoint_name(name, prefix), spec.shape) for name, spec in specs.items()]
    canon = {checkpoint_name(name, prefix): name for name in specs}
    shards = plan_shards(entries, itemsize, max_shard_bytes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total, t0 = {}, 0, time.perf_counter()
    for s, tensors in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(out / fname, "wb") as f:
            f.write(safetensors_header(tensors, code, itemsize))
            for name, shape in tensors:
                n = math.prod(shape) * itemsize
                special = _special(canon[name], shape, tdt)
                if special is not None:
                    f.write(special.contiguous().view(torch.uint8).numpy().tobytes())
                else:
                    # A per-tensor start in the pool (aligned to the element size), then wrap around.
                    start = int(hashlib.md5(name.encode()).hexdigest()[:8], 16) % n_pool // itemsize * itemsize
                    left = n
                    while left:
                        take = min(left, n_pool - start)
                        f.write(pool_bytes[start:start + take])
                        left -= take
                        start = 0
                weight_map[name] = fname
                total += n
        if progress:
            rate = total / max(time.perf_counter() - t0, 1e-9) / 2**30
            print(f"  {fname}: {len(tensors)} tensors ({total / 2**30:.2f} GiB written, {rate:.2f} GiB/s)",
                  file=sys.stderr)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    cfg_out = dict(cfg)
    cfg_out["torch_dtype"] = TORCH_DTYPE_NAME[dtype]
    (out / "config.json").write_text(json.dumps(cfg_out, indent=2) + "\n")
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return {"path": str(out), "shards": len(shards), "tensors": len(entries), "bytes": total,
            "params": arch.total_params, "seconds": round(time.perf_counter() - t0, 2)}


def _parse_size(text: str) -> int:
    from minitron.memory import parse_size

    return parse_size(text, flag="--max-shard-size")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="model dir, config.json, or a bundled config name")
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--max-shard-size", default="5GB", help="largest shard (default 5GB, as published)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix", default="backbone.", choices=["backbone.", "model."])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a config value")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from minitron.models.architecture import read_config

    cfg = read_config(args.config)
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    if args.out.exists():
        if not args.overwrite:
            print(f"error: {args.out} exists (use --overwrite)", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    info = write_synthetic_checkpoint(cfg, args.out, dtype=args.dtype, max_shard_bytes=_parse_size(args.max_shard_size),
                                      seed=args.seed, prefix=args.prefix, progress=True)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
