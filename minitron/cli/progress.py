"""The one progress display of every long loop: a live bar in a terminal, plain lines in a log.

Library loops report `(description, done, total, status)`; `Progress.update` takes exactly that.
When stderr is a terminal the display is a rich bar with rate and ETA. When it is not (CI logs,
`nohup`, Slurm, `2> log`), it prints a plain line at most every `MINITRON_PROGRESS_SECONDS`
seconds (default 10), at every 10 % and when a loop ends:

    distill: 120/400 steps (30%)  3.10 steps/s  elapsed 0:38  ETA 1:30  loss 4.2100  kl 0.9300

Nothing is shown with `--quiet` (or on ranks other than 0). The display starts with the first
update, so a command that fails before its first long loop prints only its one error line.
"""

from __future__ import annotations

import os
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


MIN_GAP_SECONDS = 1.0  # the 10 % lines of a fast loop are not all printed


class _Loop:
    def __init__(self, done: int, now: float):
        self.t0, self.done0 = now, done
        self.last_print, self.last_decile = None, -1


class Progress:
    """`update(description, done, total, status)`; `log(message)` prints above a live bar."""

    def __init__(self, *, unit: str = "", units: dict[str, str] | None = None, disable: bool = False,
                 terminal: bool | None = None, interval: float | None = None, stream=None):
        from minitron.cli.common import state, stderr  # noqa: F401 (stderr: the console factory)

        self.unit, self.units = unit, dict(units or {})
        self.disable = disable or state.quiet
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        env = os.environ.get("MINITRON_PROGRESS_SECONDS")
        self.interval = interval if interval is not None else float(env) if env else 10.0
        self._loops: dict[str, _Loop] = {}
        self._rich = None
        self._tasks: dict[str, int] = {}
        self._console = stderr

    # ------------------------------------------------------------------ protocol
    def update(self, description: str, done: int, total: int | None = None, status: str = "") -> None:
        if self.disable:
            return
        if self.terminal:
            self._rich_update(description, done, total, status)
        else:
            self._plain_update(description, done, total, status)

    def log(self, message: str) -> None:
        """A line that must not be garbled by the bar."""
        if self._rich is not None:
            self._rich.console.print(message)
        else:
            from minitron.cli.common import info

            info(message)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ terminal
    def _rich_update(self, description, done, total, status):
        if self._rich is None:
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=self._console(), transient=False,
            )  # fmt: skip
            self._rich.start()
        if description not in self._tasks:
            self._tasks[description] = self._rich.add_task(description, total=total, status=status,
                                                           unit=self.units.get(description, self.unit))
        self._rich.update(self._tasks[description], completed=done, total=total, status=status)

    # ------------------------------------------------------------------ log file
    def _plain_update(self, description, done, total, status):
        now = time.monotonic()
        loop = self._loops.get(description)
        if loop is None:
            loop = self._loops[description] = _Loop(done, now)
        finished = total is not None and done >= total
        decile = int(10 * done / total) if total else -1
        if loop.last_print is not None and finished and loop.last_decile == 10:
            return  # the final line is printed once
        since = None if loop.last_print is None else now - loop.last_print
        due = (since is None or finished or since >= self.interval
               or (decile > loop.last_decile and since >= MIN_GAP_SECONDS))  # fmt: skip
        if not due:
            return
        loop.last_print, loop.last_decile = now, decile
        unit = self.units.get(description, self.unit)
        line = self.line(description, done, total, status, now - loop.t0, done - loop.done0, unit)
        self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, description, done, total, status, elapsed, progressed, unit_name: str = "") -> str:
        unit = f" {unit_name}" if unit_name else ""
        parts = [f"{description}: {done:,}/{total:,}{unit} ({100 * done / total:.0f}%)" if total
                 else f"{description}: {done:,}{unit}"]
        rate = progressed / elapsed if elapsed > 0 and progressed > 0 else None
        if rate is not None:
            parts.append(f"{rate:,.2f} {unit_name or 'it'}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if total:
            eta = (total - done) / rate if rate else None
            parts.append(f"ETA {_clock(eta)}")
        if status:
            parts.append(status)
        return "  ".join(parts)


# What prune's loops count (`prune()` reports "proxy", "distill", "iterative" and "prune").
PRUNE_UNITS = {"proxy": "candidates", "distill": "candidates", "iterative": "layers", "prune": "tensors"}
