"""Fault-injection points for the crash tests.

`MINITRON_FAULT=<name>` makes the process SIGKILL itself when it reaches the point `<name>` — the
same as `kill -9` at that instant, but at a known place, so tests can check that a rerun cleans up
and ends with the result of an uninterrupted run. Points: `claimed` (an output directory was just
locked), `prune-tensor-written` (the first pruned tensor is on disk), `checkpoint-saved` (a
distillation checkpoint was just written), `before-rename` (a complete result waits in its
temporary directory). Unset, each point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("MINITRON_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
