"""Load a checkpoint straight into FSDP2 shards: each rank reads only its own rows of each tensor.

The former path loaded the whole model on every rank (`from_pretrained` on CPU) and then sharded it,
so each of N ranks on a host held a full copy for a while. Here:

    1. the model is built with its *parameters* on the meta device (no memory) and its buffers real:
       non-persistent buffers (rotary `inv_freq`, ...) are computed by the modules' own `__init__`,
       exactly as `from_pretrained` computes them;
    2. `fsdp_wrap` shards the meta model (one FSDP2 unit per block, then the root);
    3. `to_empty` allocates each rank's shards only; tied parameters are tied again (to_empty gives
       every module its own new tensor) and the buffers get their values back;
    4. for every parameter and persistent buffer, the rank reads rows [start, start + local rows) of
       dim 0 from the safetensors file (a positioned read of exactly those bytes, not a memory map)
       and copies them, cast to the parameter's dtype, into its local shard.

Per-rank host memory is then about 1/N of the model, plus one slice being read. Rank r of N holds
rows [r·c, min((r+1)·c, n)) of a parameter with n rows, c = ⌈n / N⌉ (FSDP2's `Shard(0)`, as
`torch.chunk` cuts). The result is the model `from_pretrained` gives, sharded: bit-identical
(tests/test_distill_sharded_load.py).

Checkpoint names differ from the module's in two ways handled here (`resolve_sources`): the base
prefix (`backbone.` in NVIDIA's releases, `model.` in transformers) and MoE experts, which
checkpoints store one tensor per expert (`experts.{j}.up_proj.weight`) and transformers' module holds
stacked on a new dim 0 (`experts.up_proj` [E, ...]); a dim-0 shard of the stack is then a range of
whole experts, read one file tensor each. A tied output embedding absent from the files takes the
input embedding's tensor, as in `from_pretrained`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from minitron.dtypes import torch_dtype_of_code
from minitron.errors import CheckpointError
from minitron.models.safetensors_io import header_length
from minitron.models.tensors import canonical_name

_EXPERT_RE = re.compile(r"^(.*\.experts)\.([^.]+)$")  # `...experts.up_proj` (module) <- `...experts.{j}.up_proj.weight`


@dataclass(frozen=True)
class Source:
    """Where one module tensor lives in the checkpoint: one entry, or one per index of dim 0 (`stacked`)."""

    entries: tuple  # minitron.models.checkpoint.TensorEntry, in dim-0 order when stacked
    stacked: bool = False


def resolve_sources(module_shapes: dict[str, tuple[int, ...]], entries: dict) -> dict[str, Source]:
    """For each module state-dict name (with its shape), its checkpoint source; pure (names and shapes).

    `entries`: checkpoint key -> TensorEntry. Raises CheckpointError naming what is missing or does not
    match, before anything is read.
    """
    by_canonical = {canonical_name(k): e for k, e in entries.items()}
    out: dict[str, Source] = {}
    for name, shape in module_shapes.items():
        c = canonical_name(name)
        if c in by_canonical:
            src = Source((by_canonical[c],))
            got = tuple(by_canonical[c].shape)
        elif (m := _EXPERT_RE.match(c)) and len(shape) >= 1:
            keys = [f"{m.group(1)}.{j}.{m.group(2)}.weight" for j in range(shape[0])]
            if not all(k in by_canonical for k in keys):
                raise CheckpointError(f"no checkpoint tensor for {name} (looked for {keys[0]} ...)")
            src = Source(tuple(by_canonical[k] for k in keys), stacked=True)
            inner = {tuple(by_canonical[k].shape) for k in keys}
            got = (shape[0], *inner.pop()) if len(inner) == 1 else None
        else:
            raise CheckpointError(f"no checkpoint tensor for {name}")
        if got != tuple(shape):
            raise CheckpointError(f"checkpoint tensor for {name} has shape {list(got or [])}, the model {list(shape)}")
        out[name] = src
    return out





class _Reader:
    """Rows of dim 0 from safetensors files, by positioned reads of exactly those bytes.

    Not through a memory map: pages of a mapped file count in the process's RSS once touched, so
    reading every rank's rows through `safe_open` would leave each rank with its shards twice (its
    copy and the mapped pages) until the file is closed.
    """

    def __init__(self, directory: Path):
        self.directory, self.files, self.data_start = Path(directory), {}, {}

    def _open(self, file: str):
        if file not in self.files:
            f = open(self.directory / file, "rb")  # noqa: SIM115 (closed in close())
            self.files[file], self.data_start[file] = f, 8 + header_length(f)
        return self.files[file]

    def _read(self, e, first: int, count: int):
        """Rows [first, first + count) of entry `e` (C-contiguous: a row is prod(shape[1:]) elements)."""
        import torch

        dtype = torch_dtype_of_code(e.dtype)
        shape = (count, *e.shape[1:]) if e.shape else ()
        out = torch.empty(shape, dtype=dtype)
        row = e.nbytes // e.shape[0] if e.shape and e.shape[0] else e.nbytes
        f = self._open(e.file)
        buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
        if buf is not None:
            f.seek(self.data_start[e.file] + e.offsets[0] + first * row)
            if f.readinto(memoryview(buf)) != buf.nbytes:
                raise CheckpointError(f"{e.file}: truncated while reading {e.key}")
        return out

    def rows(self, src: Source, start: int, stop: int):
        import torch

        if src.stacked:  # one file tensor per index of dim 0 (an expert)
            parts = [self._read(e, 0, e.shape[0] if e.shape else 1) for e in src.entries[start:stop]]
            return torch.stack(parts) if parts else torch.empty((0, *src.entries[0].shape))
        e = src.entries[0]
        return self._read(e, 0, 1) if not e.shape else self._read(e, start, stop - start)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def _local_rows(t):
    """(the local tensor to fill, first global row): a DTensor's shard of dim 0, or a plain tensor (all rows)."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return t, 0
    placements = t.placements
    if len(placements) != 1 or placements[0] != Shard(0):
        raise CheckpointError(f"sharded loading expects Shard(0) parameters, got {placements}")
    mesh = t.device_mesh
    n, world, r = t.shape[0], mesh.size(), mesh.get_local_rank()
    per = -(-n // world)  # torch.chunk: ceil-sized pieces, the last ones shorter or empty
    local = t.to_local()
    start = min(r * per, n)
    if local.shape[0] != min(per, n - start):
        raise CheckpointError(f"unexpected shard of {tuple(t.shape)} on rank {r}: {tuple(local.shape)}")
    return local, start


def tied_aliases(model) -> dict[str, str]:
    """Names under which a parameter is reachable besides its first one (tied weights): alias -> first."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _retie(model, aliases: dict[str, str]) -> None:
    """Point every alias at its first name's parameter again (`to_empty` makes one tensor per module)."""
    for alias, name in aliases.items():
        owner, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(name))


def build_empty(path: str | Path, dtype: str | None):
    """transformers' own model class for checkpoint `path`: parameters on meta, buffers computed."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from minitron.dtypes import torch_dtype

    config = AutoConfig.from_pretrained(Path(path))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype) if dtype else torch.float32)
    model.tie_weights()  # the context wraps every parameter registered in it anew, which unties them
    return model


def _record_conversions(model, keys) -> None:
    """Record on `model` what `from_pretrained` records: the key conversions this checkpoint's names used.

    `save_pretrained` reverses them, so the distilled model keeps the checkpoint's layout (`backbone.`
    names, one tensor per expert). Without the record it would look the conversions up by the model's
    class, which FSDP2 replaces by one of its own that transformers takes for custom code (no conversion).
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [c for c in mapping if isinstance(c, WeightRenaming)]
    converters = [c for c in mapping if isinstance(c, WeightConverter)]
    meta = model.state_dict()
    for key in sorted(keys):
        rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
    model._weight_conversions = [c for c in mapping if c.was_used()]


def check_loadable(path: str | Path) -> None:
    """Raise CheckpointError unless every tensor of the model has a source in the checkpoint at `path`
    (config and headers only: the model is built on meta and nothing is read)."""
    from minitron.models.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path, require_weights=True, check=True)
    model = build_empty(ckpt.path, None)
    resolve_sources(_state_shapes(model), ckpt.tensors)
    _record_conversions(model, ckpt.tensors)  # transformers' key conversions are found too


def _non_persistent(model) -> set[str]:
    return {f"{mn}.{b}" if mn else b for mn, m in model.named_modules() for b in m._non_persistent_buffers_set}


def _state_shapes(model) -> dict[str, tuple[int, ...]]:
    """Shapes of what the checkpoint must hold: parameters (once each) and persistent buffers."""
    skip = _non_persistent(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return shapes | {n: tuple(b.shape) for n, b in model.named_buffers() if n not in skip}


def load_sharded(path: str | Path, *, dtype: str | None, device: str = "cpu", wrap=None):
    """The checkpoint at `path` as transformers' model, each rank holding only its shards.

    `wrap(model)` shards the meta model in place (e.g. `parallel.fsdp_wrap`); None keeps it whole
    (every row read: the same model `load_model` gives, used to test this loader in one process).
    Returns the model in eval mode.
    """
    import torch

    from minitron.models.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path, require_weights=True, check=True)
    model = build_empty(ckpt.path, dtype)
    aliases = tied_aliases(model)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # small; computed by the modules
    sources = resolve_sources(_state_shapes(model), ckpt.tensors)  # every name found, shapes checked, nothing read
    _record_conversions(model, ckpt.tensors)
    if wrap is not None:
        wrap(model)
    model.to_empty(device=torch.device(device))
    _retie(model, aliases)
    reader = _Reader(ckpt.path)
    try:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
            tensors = dict(model.named_parameters())
            tensors |= {n: b for n, b in model.named_buffers() if n in sources}
            for name, t in tensors.items():
                local, start = _local_rows(t)
                rows = local.shape[0] if local.ndim else 0
                local.copy_(reader.rows(sources[name], start, start + rows).to(local.dtype))
    finally:
        reader.close()
    return model.eval()
