"""Reading Hugging Face Nemotron-H checkpoints: shards, headers, strict checks, loading.

`Checkpoint.open(dir)` reads config.json and the safetensors *headers* only (a few KB per shard),
and `check()` compares every tensor's name and shape with what the config implies, before any heavy
work starts. `load_model()` then builds transformers' own model class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from minitron.dtypes import CODE_BYTES, torch_dtype
from minitron.errors import CheckpointError, InputError, MinitronError
from minitron.models.architecture import Architecture, read_config
from minitron.models.safetensors_io import read_header as read_safetensors_header
from minitron.models.tensors import TensorSpec, base_prefix, canonical_name, model_specs

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
)  # fmt: skip


@dataclass(frozen=True)
class TensorEntry:
    key: str  # name in the checkpoint
    file: str  # shard file name
    dtype: str  # safetensors dtype code (BF16, F32, ...)
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # byte range inside the shard's data section

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


@dataclass
class Checkpoint:
    """A model directory: its config, architecture and (if present) the tensors' headers."""

    path: Path
    config: dict
    arch: Architecture
    tensors: dict[str, TensorEntry] = field(default_factory=dict)  # by checkpoint key

    @classmethod
    def open(cls, path: str | Path, *, require_weights: bool = False, fetch_weights: bool | None = None) -> Checkpoint:
        """`fetch_weights` (default: `require_weights`): download a hub model's shards too."""
        from minitron.hub import resolve_model_path

        p = resolve_model_path(path, weights=require_weights if fetch_weights is None else fetch_weights)
        config = read_config(p)
        arch = Architecture.from_config(config)
        ckpt = cls(path=p if p.is_dir() else p.parent, config=config, arch=arch)
        ckpt.tensors = ckpt._read_headers()
        if require_weights and not ckpt.tensors:
            raise InputError(f"{ckpt.path} has a config but no *.safetensors weights")
        return ckpt

    @property
    def has_weights(self) -> bool:
        return bool(self.tensors)

    def shard_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index.name}: malformed index") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise CheckpointError(f"{index.name} names missing shard(s): {', '.join(missing)}")
            return [self.path / f for f in files]
        single = self.path / "model.safetensors"
        if single.is_file():
            return [single]
        return sorted(self.path.glob("*.safetensors"))

    def _read_headers(self) -> dict[str, TensorEntry]:
        out: dict[str, TensorEntry] = {}
        for f in self.shard_files():
            header = read_safetensors_header(f)
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                out[key] = TensorEntry(key, f.name, meta["dtype"], tuple(meta["shape"]), tuple(meta["data_offsets"]))
        return out

    @property
    def prefix(self) -> str:
        return base_prefix(self.tensors)

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def largest_shard_bytes(self) -> int:
        return max((f.stat().st_size for f in self.shard_files()), default=0)

    @property
    def dtype(self) -> str | None:
        """The most common dtype of the stored tensors (by bytes)."""
        by: dict[str, int] = {}
        for t in self.tensors.values():
            by[t.dtype] = by.get(t.dtype, 0) + t.nbytes
        return max(by, key=by.get) if by else None

    def specs(self) -> dict[str, TensorSpec]:
        return model_specs(self.arch)

    def entry(self, canonical: str) -> TensorEntry:
        for key in (canonical, "model." + canonical, "backbone." + canonical):
            if key in self.tensors:
                return self.tensors[key]
        raise KeyError(canonical)

    def check(self) -> None:
        """Strict key and shape check of the stored tensors against the config (headers only)."""
        if not self.tensors:
            return
        expected = self.specs()
        found = {canonical_name(k): e for k, e in self.tensors.items()}
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise CheckpointError(f"{self.path}: missing tensors: {', '.join(missing[:3])}{more}")
        if unexpected:
            more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
            raise CheckpointError(f"{self.path}: unexpected tensors: {', '.join(unexpected[:3])}{more}")
        for name, spec in expected.items():
            got = found[name].shape
            if tuple(got) != spec.shape:
                raise CheckpointError(
                    f"{self.path}: tensor {found[name].key} has shape {list(got)} but config.json implies {list(spec.shape)}"
                )
            if found[name].dtype not in CODE_BYTES:
                raise CheckpointError(f"{self.path}: tensor {found[name].key} has unsupported dtype {found[name].dtype}")


_SPECIAL_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def hf_config(cfg: dict):
    """A transformers config object from a config.json dict, as `from_pretrained` would read it.

    config.json spells floats JSON cannot hold as `{"__float__": "Infinity"}` (Bamba's and Granite's
    `time_step_limit`); `AutoConfig.for_model(**cfg)` does not decode them, so this does first.
    """
    from transformers import AutoConfig

    def decode(x):
        if isinstance(x, dict):
            if set(x) == {"__float__"} and x["__float__"] in _SPECIAL_FLOATS:
                return _SPECIAL_FLOATS[x["__float__"]]
            return {k: decode(v) for k, v in x.items()}
        if isinstance(x, list):
            return [decode(v) for v in x]
        return x

    return AutoConfig.for_model(**decode(cfg))


def open_checkpoint(path: str | Path, *, require_weights: bool = False, check: bool = True,
                    fetch_weights: bool | None = None) -> Checkpoint:
    ckpt = Checkpoint.open(path, require_weights=require_weights, fetch_weights=fetch_weights)
    if check:
        ckpt.check()
    return ckpt


def load_model(path: str | Path, *, dtype: str | None = None, device: str = "cpu", check: bool = True):
    """Load a checkpoint with transformers' own `AutoModelForCausalLM`, strictly, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = open_checkpoint(path, require_weights=True, check=check)
    td = torch_dtype(dtype) if dtype else torch.float32
    try:
        model, info = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=td, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.path}: cannot load the model ({str(e).splitlines()[0]})") from None
    bad = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise CheckpointError(f"{ckpt.path}: {bad[0].replace('_', ' ')}: {sorted(info[bad[0]])[:3]}")
    model.to(torch.device(device)).eval()
    return model


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(path))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{path}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None


def open_model_dir(path, flag: str):
    """A model directory with weights (a bundled name or hub id resolved), checked; errors name `flag`."""
    from minitron.hub import resolve_model_path

    path = resolve_model_path(path, weights=True, flag=flag)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"{path} is not a Hugging Face causal-LM directory (no config.json)", flag=flag)
    try:
        return open_checkpoint(path, require_weights=True, check=True)
    except MinitronError as e:
        raise InputError(str(e), flag=flag) from None


def optional_tokenizer(path: Path, flag: str):
    """The tokenizer of a model directory, or None when it has none; errors name `flag`."""
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    try:
        return load_tokenizer(path)
    except MinitronError as e:
        raise InputError(str(e), flag=flag) from None


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer and generation-config files from one model directory to another."""
    import shutil

    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied
