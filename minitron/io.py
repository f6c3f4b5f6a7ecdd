"""Atomic outputs, output locks, fingerprints and provenance (`minitron.json`).

An output directory is *claimed* before any work starts (`check_output_dir`): the destination is
validated (not an input, not inside one, not under a file, its nearest existing parent writable)
and an exclusive lock `.<name>.lock` beside it is taken, so a second run on the same `--out` fails
at once with one line. Temporary directories of an earlier run that was killed (`.<name>.tmp-*`,
`.<name>.old-*`) are removed then. Results are written into a temporary directory beside the
destination and renamed into place only when complete (`atomic_output_dir`); an existing
destination is refused unless `overwrite` is set. On failure, the claim is released and the
parent directories it created are removed again: an error leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from minitron import __version__, faults
from minitron.errors import InputError

PROVENANCE_FILE = "minitron.json"
log = logging.getLogger("minitron")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _inside(a: Path, b: Path) -> bool:
    """Is `a` equal to or inside `b` (both resolved)?"""
    return a == b or b in a.parents


def _is_main_process() -> bool:
    """Under torchrun only rank 0 writes outputs (and holds their lock)."""
    return os.environ.get("RANK", "0") in ("", "0")


@dataclass
class _Claim:
    dest: Path
    lock: Path
    fd: int
    created: list[Path] = field(default_factory=list)  # parent directories this claim made


_claims: dict[Path, _Claim] = {}


def check_output_dir(dest: str | Path, *, overwrite: bool = False, inputs=(), flag: str = "--out") -> Path:
    """Validate an output directory before any work starts and claim it (an exclusive lock).

    Nothing is created when a check fails. A claim is held until `atomic_output_dir` has renamed the
    result into place, or `release_outputs()` (the CLI calls it when a command ends).
    """
    dest = Path(dest)
    full = Path(os.path.abspath(dest))
    real = full.resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).resolve()
        if real == s:
            raise InputError(f"output {dest} is the same as the input; choose another directory", flag=flag)
        if _inside(real, s) and s.is_dir():
            raise InputError(f"output {dest} is inside the input {src}; inputs are never modified", flag=flag)
        if _inside(s, real):
            raise InputError(f"output {dest} contains the input {src}; choose another directory", flag=flag)
    if real in _claims:
        return dest
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a directory", flag=flag)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists (use --overwrite to replace it)", flag=flag)
    anc = _nearest_existing(full.parent)
    if not anc.is_dir():
        raise InputError(f"cannot create {dest}: {anc} is a file, not a directory", flag=flag)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {anc} (permission denied)", flag=flag)
    if _is_main_process():
        _claim(dest, real, flag)
    return dest


def _claim(dest: Path, real: Path, flag: str) -> None:
    created = []
    p = real.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        lock = real.parent / f".{real.name}.lock"
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read_holder(lock)
                    raise InputError(f"{dest} is in use by another minitron run{holder}; wait for it or choose "
                                     "another directory", flag=flag) from None
                raise
            # The lock file may have been removed by the previous holder between open and flock.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
    except BaseException:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    _claims[real] = _Claim(dest, lock, fd, created)
    _remove_stale(real)
    faults.point("claimed")


def _read_holder(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(lock.read_text().split()[0])
        return f" (pid {pid})"
    return ""


def _remove_stale(real: Path) -> None:
    """Temporary directories of a killed run on this destination (safe: we hold its lock)."""
    for p in sorted(real.parent.glob(f".{real.name}.tmp-*")) + sorted(real.parent.glob(f".{real.name}.old-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log.warning(f"removed {p}, left by an interrupted run")


def release_output(dest: str | Path, *, failed: bool = False) -> None:
    """Drop the claim on `dest` (removing the parents it created if `failed` and they are empty)."""
    claim = _claims.pop(Path(os.path.abspath(dest)).resolve(), None)
    if claim is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(claim.lock)
    os.close(claim.fd)
    if failed:
        for d in claim.created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()


def held_outputs() -> frozenset[Path]:
    """The destinations this process holds claims on now."""
    return frozenset(_claims)


def release_outputs(*, failed: bool = False, keep: frozenset[Path] = frozenset()) -> None:
    """Release this process's claims but those in `keep` (the CLI calls this when a command ends:
    a command run inside `minitron run` releases its own claims, not the run's)."""
    for real in list(_claims):
        if real not in keep:
            release_output(real, failed=failed)


@contextlib.contextmanager
def atomic_output_dir(dest: str | Path, *, overwrite: bool = False):
    """Yield a temporary directory beside `dest`; on success it replaces `dest` in one rename."""
    dest = Path(dest)
    parent = dest.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the result should look like any directory
    try:
        yield tmp
        normalize_permissions(tmp)
        faults.point("before-rename")
        if dest.exists():
            if not overwrite:
                raise InputError(f"{dest} already exists (use --overwrite to replace it)", flag="--out")
            old = parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        release_output(dest, failed=True)
        raise
    release_output(dest)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file in one rename, with the permissions of an ordinary new file (0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def normalize_permissions(root: str | Path) -> None:
    """Give every file under `root` ordinary permissions (some writers use 0600 temporaries)."""
    fmode, dmode = 0o666 & ~_umask(), 0o777 & ~_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                os.chmod(p, fmode)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), dmode)


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
    from minitron.models.safetensors_io import header_length

    p = Path(path)
    h = hashlib.sha256()
    cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else {}
    for k in ("transformers_version", "dtype", "torch_dtype", "_name_or_path"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for f in Checkpoint.open(p).shard_files():
        with open(f, "rb") as fh:
            n = header_length(fh)
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
