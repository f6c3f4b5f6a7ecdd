"""Apply a `PrunePlan` to a checkpoint on disk, shard by shard, never holding the model in memory.

Every output shape is known from the plan before any data is read, so each output shard's
safetensors header is written first and the tensors are then streamed into it one at a time:

    for each source tensor, in file order (dropped blocks and dropped experts are never read):
        read its kept row range with `safe_open(...).get_slice(key)[lo:hi]`
        cut every dimension with `tensor_indices` (the function the in-memory apply uses)
        with compensation (`compensation.py`), an output projection's kept columns are refitted instead
        with a hidden rotation (`rotation.py`), contract its hidden dimensions to the kept components
        append the bytes to the current output shard

Peak memory is about one source tensor and its pruned copy, plus the pages of the source shard
being read (the file is memory-mapped by safetensors and closed when the next shard starts).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from minitron import faults
from minitron.dtypes import CODE_BYTES
from minitron.models.checkpoint import Checkpoint
from minitron.models.safetensors_io import encode_header
from minitron.models.tensors import canonical_name, checkpoint_name, model_specs
from minitron.progress import report
from minitron.prune.plan import PrunePlan, pruned_shape, stacked_indices, tensor_indices

DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class Item:
    """One output tensor: where it comes from and how it is cut."""

    out_key: str
    src_file: str
    src_key: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]  # after pruning
    idx: tuple[list[int] | None, ...]
    slices: tuple | None = None  # a fused [E, ...] expert tensor (Granite): (expert j, its slice's idx) per kept j
    spec: object = None  # its TensorSpec, for a plan that rotates the hidden channels (`rotation.py`)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * CODE_BYTES[self.dtype]


def plan_items(ckpt: Checkpoint, plan: PrunePlan) -> list[Item]:
    """The output tensors, in source file order (shard, then byte offset)."""
    from minitron.prune.apply import kept_name

    specs = model_specs(plan.source, layout="checkpoint")
    entries = sorted(ckpt.tensors.values(), key=lambda e: (e.file, e.offsets[0]))
    items = []
    for e in entries:
        name = canonical_name(e.key)
        if name not in specs:  # a tied lm_head stored anyway
            continue
        spec = specs[name]
        new = kept_name(name, spec, plan)
        if new is None:
            continue
        prefix = e.key[: len(e.key) - len(name)]
        out_key = checkpoint_name(new, prefix) if prefix else new
        if spec.stacked:  # each kept expert's slice cut with its own indices, stacked again
            slices = tuple(stacked_indices(spec, plan))
            shape = (len(slices), *pruned_shape(spec.expert_slice(0), slices[0][1], plan))
            items.append(Item(out_key, e.file, e.key, e.dtype, shape, (), slices, spec))
            continue
        idx = tensor_indices(spec, plan)
        items.append(Item(out_key, e.file, e.key, e.dtype, pruned_shape(spec, idx, plan), idx, spec=spec))
    return items


def split_shards(items: list[Item], max_shard_bytes: int) -> list[list[Item]]:
    shards, cur, size = [], [], 0
    for it in items:
        if cur and size + it.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += it.nbytes
    if cur:
        shards.append(cur)
    return shards


def shard_header(items: list[Item]) -> bytes:
    """Length-prefixed safetensors JSON header (space-padded to 8 bytes) for `items` in order."""
    entries, off = {}, 0
    for it in items:
        entries[it.out_key] = {"dtype": it.dtype, "shape": list(it.shape), "data_offsets": [off, off + it.nbytes]}
        off += it.nbytes
    return encode_header(entries, {"format": "pt"})


def read_pruned(handle, item: Item, rotation=None, compensation=None):
    """Read only the bounding row range of the kept rows, then cut every dimension (and rotate)."""
    import torch

    from minitron.prune.apply import prune_tensor_fast

    sl = handle.get_slice(item.src_key)
    if item.slices is not None:  # one expert's slice at a time
        t = torch.stack([prune_tensor_fast(sl[j:j + 1][0], idx) for j, idx in item.slices]).contiguous()
        if rotation is not None:
            t = rotation.apply(item.spec.name, item.spec, t)
        assert tuple(t.shape) == item.shape, (item.out_key, tuple(t.shape), item.shape)
        return t.view(torch.uint8) if t.numel() else t
    rows = item.idx[0]
    if rows is None:
        t = sl[:]
        idx = item.idx
    else:
        lo, hi = min(rows), max(rows) + 1
        t = sl[lo:hi]
        idx = ([r - lo for r in rows], *item.idx[1:])
    if compensation is not None and compensation.covers(item.spec.name, idx):
        t = compensation.cut(item.spec.name, t, idx)
    else:
        t = prune_tensor_fast(t, idx)
    if rotation is not None:
        t = rotation.apply(item.spec.name, item.spec, t)
    assert tuple(t.shape) == item.shape, (item.out_key, tuple(t.shape), item.shape)
    return t.view(torch.uint8) if t.numel() else t


def _read_folds(ckpt: Checkpoint, rotation) -> None:
    """The residual stream's norm weights (small), which the rotation folds into their readers."""
    from safetensors import safe_open

    by_file: dict[str, list] = {}
    for e in ckpt.tensors.values():
        if canonical_name(e.key) in rotation.norms:
            by_file.setdefault(e.file, []).append(e.key)
    rotation.folds = {}
    for fname, keys in by_file.items():  # each shard opened once
        with safe_open(str(ckpt.path / fname), framework="pt") as h:
            for key in keys:
                rotation.folds[canonical_name(key)] = h.get_tensor(key).float()


def prune_checkpoint(ckpt: Checkpoint, plan: PrunePlan, out_dir: str | Path, *,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress=None) -> dict:
    """Write the pruned tensors of `ckpt` as sharded safetensors + index into `out_dir`.

    `progress("prune", n_done, n_total)` (`minitron.progress`) is called after each tensor. Returns file names and sizes.
    """
    from safetensors import safe_open

    items = plan_items(ckpt, plan)
    if plan.rotation is not None:
        _read_folds(ckpt, plan.rotation)
    shards = split_shards(items, max_shard_bytes)
    out_dir = Path(out_dir)
    weight_map, written, done = {}, 0, 0
    handle, handle_file = None, None
    try:
        for s, shard in enumerate(shards):
            fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
            with open(out_dir / fname, "wb") as f:
                f.write(shard_header(shard))
                for it in shard:
                    if it.src_file != handle_file:
                        handle = None  # release the previous shard's mapping first
                        handle = safe_open(str(ckpt.path / it.src_file), framework="pt")
                        handle_file = it.src_file
                    t = read_pruned(handle, it, plan.rotation, plan.compensation)
                    if t.numel():
                        f.write(memoryview(t.numpy()).cast("B"))
                    del t
                    weight_map[it.out_key] = fname
                    written += it.nbytes
                    done += 1
                    if done == 1:
                        faults.point("prune-tensor-written")
                    report(progress, "prune", done, len(items))
    finally:
        handle = None
    index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return {"files": [f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors" for s in range(len(shards))],
            "tensors": len(items), "bytes": written}
