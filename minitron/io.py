"""Atomic outputs, fingerprints and provenance (`minitron.json`).

Outputs are written into a temporary directory beside the destination and renamed into place only
when complete: an interrupted run never leaves a half-written result, and an existing destination is
refused unless `overwrite` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from minitron import __version__
from minitron.errors import InputError

PROVENANCE_FILE = "minitron.json"


def check_output_dir(dest: str | Path, *, overwrite: bool = False, inputs=(), flag: str = "--out") -> Path:
    """Validate an output directory before any work starts (nothing is created)."""
    dest = Path(dest)
    for src in inputs:
        if src is not None and Path(src).resolve() == dest.resolve():
            raise InputError(f"output {dest} is the same as the input; choose another directory", flag=flag)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists (use --overwrite to replace it)", flag=flag)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a directory", flag=flag)
    parent = dest.resolve().parent
    if not parent.exists():
        with contextlib.suppress(OSError):
            parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write into {parent}", flag=flag)
    return dest


@contextlib.contextmanager
def atomic_output_dir(dest: str | Path, *, overwrite: bool = False):
    """Yield a temporary directory beside `dest`; on success it replaces `dest` in one rename."""
    dest = Path(dest)
    parent = dest.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like any directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(f"{dest} already exists (use --overwrite to replace it)", flag="--out")
        old = parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(path: str | Path) -> str:
    """A cheap, stable identity of a model directory: its config and every safetensors header.

    Headers hold names, shapes, dtypes and offsets (not the weights themselves), so this is fast on a
    12B checkpoint; two different trainings of one architecture are told apart by their metadata and
    by the config. Use `file_sha256` of the shards where bit-level identity matters.
    """
    from minitron.models.checkpoint import Checkpoint

    p = Path(path)
    h = hashlib.sha256()
    cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else {}
    for k in ("transformers_version", "dtype", "torch_dtype", "_name_or_path"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for f in Checkpoint.open(p).shard_files():
        with open(f, "rb") as fh:
            (n,) = __import__("struct").unpack("<Q", fh.read(8))
            h.update(fh.read(n))
        # A sample of the data section makes the identity depend on the weights too (cheaply).
        size = f.stat().st_size
        with open(f, "rb") as fh:
            for off in (8 + n, max(8 + n, size // 2), max(8 + n, size - 4096)):
                fh.seek(off)
                h.update(fh.read(4096))
    return h.hexdigest()[:16]


def versions() -> dict:
    out = {"minitron": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "safetensors", "lm_eval"):
        m = sys.modules.get(mod)
        if m is None:
            with contextlib.suppress(Exception):
                m = __import__(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def write_provenance(out_dir: str | Path, command: str, options: dict, *, inputs: dict | None = None,
                     result: dict | None = None) -> dict:
    """Write `minitron.json` into `out_dir`: how this output was made."""
    doc = {
        "command": command,
        "argv": sys.argv,
        "options": _jsonable(options),
        "inputs": inputs or {},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "result": _jsonable(result or {}),
    }
    atomic_write_text(Path(out_dir) / PROVENANCE_FILE, json.dumps(doc, indent=2) + "\n")
    return doc


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
