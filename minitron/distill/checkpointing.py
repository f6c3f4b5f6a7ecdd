"""Where a distillation run keeps its in-progress state, and how it resumes.

While a run is going, everything lives in the *run directory* `<out>.partial/` beside `--out`:

    <out>.partial/
      run.json                  what the run is (inputs' fingerprints, training options): a run
                                started again on the same --out resumes only if these agree
      metrics.jsonl             one JSON line per step and per evaluation
      checkpoints/
        step-00000050.pt        student weights, optimiser, schedule, RNG states, data position

Each checkpoint is written to a temporary file and renamed into place (atomic on POSIX), so a
SIGKILL leaves either the previous or the new checkpoint, never a torn one. Only the last
`--keep-last` are kept. `--out` itself appears, complete, only at the end; the run directory is then
removed (its metrics.jsonl is copied into `--out`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from minitron import faults
from minitron.errors import InputError
from minitron.io import atomic_write_text

CKPT_RE = re.compile(r"^step-(\d{8})\.pt$")


def run_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.partial"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    # -- identity of the run
    def read_identity(self) -> dict | None:
        if not self.run_file.is_file():
            return None
        try:
            return json.loads(self.run_file.read_text())
        except json.JSONDecodeError:
            return None

    def check_resumable(self, identity: dict) -> None:
        """Refuse to resume a run directory made with different inputs or options."""
        old = self.read_identity()
        if old is None:
            return
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff:
            raise InputError(
                f"{self.path} holds an unfinished run with different {', '.join(diff[:4])}; "
                f"delete it or pass --restart to start afresh",
                flag="--out",
            )

    def start(self, identity: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_file, json.dumps(identity, indent=2, sort_keys=True) + "\n")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- checkpoints
    def list_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CKPT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def save(self, state: dict, step: int, keep_last: int) -> Path:
        """Write `state` as step-XXXXXXXX.pt atomically; prune to the last `keep_last` (>= 1)."""
        import torch

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        dest = self.checkpoints / f"step-{step:08d}.pt"
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=self.checkpoints)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            faults.point("checkpoint-saved")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        for _, old in self.list_checkpoints()[: -max(1, keep_last)]:
            with contextlib.suppress(OSError):
                old.unlink()
        return dest

    @staticmethod
    def load(path: Path) -> dict:
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)

    # -- metrics
    def append_metrics(self, record: dict) -> None:
        from minitron.fmt import clean_floats

        with open(self.metrics, "a") as f:
            f.write(json.dumps(clean_floats(record)) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop records of steps after `step` (logged by a run killed after its last checkpoint)."""
        if not self.metrics.is_file():
            return
        keep = []
        for line in self.metrics.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
        atomic_write_text(self.metrics, "".join(line + "\n" for line in keep))
