"""What every command shares: output streams, verbosity, error handling, JSON, progress bars.

Results go to stdout; logs, warnings and progress bars to stderr. With `--json` a command prints one
JSON document on stdout and nothing else. Errors a user can cause end in one line on stderr and the
exit code of DESIGN.md (2 bad input, 3 infeasible); anything else is exit 1. `MINITRON_DEBUG=1`
shows the traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from minitron.errors import EXIT_UNEXPECTED, MinitronError

log = logging.getLogger("minitron")


class _State:
    verbose: int = 0
    quiet: bool = False


state = _State()


def stdout() -> Console:
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def stderr() -> Console:
    return Console(file=sys.stderr, highlight=False)


def debug_enabled() -> bool:
    return os.environ.get("MINITRON_DEBUG", "") not in ("", "0", "false")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    state.verbose, state.quiet = verbose, quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # transformers and friends are chatty (kernel fall-back notices, loading bars): quiet unless -vv.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose < 2:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        for name in ("transformers", "datasets", "lm_eval", "lm-eval", "torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if "transformers" in sys.modules:
            try:
                from transformers.utils import logging as hf_logging

                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
            except Exception:  # pragma: no cover
                pass


def info(msg: str) -> None:
    """A log line on stderr (hidden by --quiet)."""
    if not state.quiet:
        stderr().print(msg)


def fail(err: BaseException) -> typer.Exit:
    """Print one line for `err` on stderr and return the `typer.Exit` with its code."""
    if debug_enabled():
        traceback.print_exception(err, file=sys.stderr)
    if isinstance(err, MinitronError):
        print(f"error: {err}", file=sys.stderr)
        return typer.Exit(err.exit_code)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    hint = "" if debug_enabled() else " (set MINITRON_DEBUG=1 for the traceback)"
    print(f"error: unexpected {type(err).__name__}: {first}{hint}", file=sys.stderr)
    return typer.Exit(EXIT_UNEXPECTED)


def command(fn):
    """Wrap a command: errors a user can cause become one line and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
            raise fail(err) from None

    return wrapper


def _default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_floats(x):
    """NaN/inf are not JSON: they become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_floats(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_floats(v) for v in x]
    return x


def to_json(doc) -> str:
    return json.dumps(clean_floats(doc), indent=2, default=_default, allow_nan=False)


def emit_json(doc) -> None:
    """The one JSON document of a `--json` run, on stdout."""
    sys.stdout.write(to_json(doc) + "\n")
    sys.stdout.flush()


def progress(transient: bool = True, disable: bool | None = None) -> Progress:
    """A progress bar with ETA on stderr; silent with --quiet or when stderr is not a terminal-friendly sink."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr(),
        transient=transient,
        disable=state.quiet if disable is None else disable,
    )


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_params(n: int | float | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------- shared option types
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs stay on stderr).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="bf16, fp16 or fp32.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
