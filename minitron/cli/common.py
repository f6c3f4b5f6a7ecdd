"""What every command shares: output streams, verbosity, error handling, JSON.

Results go to stdout; logs, warnings and progress to stderr (`minitron.cli.progress`). With `--json`
a command prints one JSON document on stdout and nothing else, also when it fails:
`{"error": "<the one line>", "exit_code": N}`. Errors a user can cause end in one line on stderr
(`error: ...`) and the exit code of DESIGN.md (2 bad input, 3 infeasible); anything else is exit 1.
`MINITRON_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from minitron.errors import EXIT_UNEXPECTED, MinitronError
from minitron.fmt import clean_floats, fmt_bytes, fmt_int, fmt_params  # noqa: F401 (re-exported to the commands)
from minitron.options import VOCABULARY

log = logging.getLogger("minitron")


class _State:
    verbose: int = 0
    quiet: bool = False
    json: bool = False  # the running command was given --json: errors are JSON documents too
    raise_errors: bool = False  # `minitron run` calls commands in-process and reports their errors itself


state = _State()

# A file or a pipe has no width: tables are never cut to 80 columns there.
_UNBOUNDED = 100_000


def stdout() -> Console:
    con = Console(file=sys.stdout, soft_wrap=True, highlight=False)
    if not con.is_terminal:
        con.width = _UNBOUNDED
    return con


def stderr() -> Console:
    con = Console(file=sys.stderr, highlight=False)
    if not con.is_terminal:
        con.width = _UNBOUNDED
        con.soft_wrap = True
    return con


def debug_enabled() -> bool:
    return os.environ.get("MINITRON_DEBUG", "") not in ("", "0", "false")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    state.verbose, state.quiet = verbose, quiet
    # Warnings of dependencies (deprecations, kernel fall-backs) go through logging: hidden under -q
    # and unless -v, never printed through a progress bar.
    logging.captureWarnings(True)
    wlog = logging.getLogger("py.warnings")
    wlog.handlers[:] = [logging.StreamHandler(sys.stderr)]
    wlog.setLevel(logging.WARNING if verbose >= 1 else logging.CRITICAL)
    wlog.propagate = False
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


def report_error(message: str, code: int, *, as_json: bool | None = None, document: dict | None = None) -> None:
    """The one error line on stderr, and under --json the error document on stdout (`document`: what
    the command would have printed, which the error fields join, so that it stays one document)."""
    print(f"error: {message}", file=sys.stderr)
    if state.json if as_json is None else as_json:
        emit_json({**(document or {}), "error": message, "exit_code": code})


def fail(err: BaseException) -> typer.Exit:
    """Report `err` (one line) and return the `typer.Exit` with its code."""
    if debug_enabled():
        traceback.print_exception(err, file=sys.stderr)
    if isinstance(err, MinitronError):
        report_error(str(err), err.exit_code, document=getattr(err, "document", None))
        return typer.Exit(err.exit_code)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    hint = "" if debug_enabled() else " (set MINITRON_DEBUG=1 for the traceback)"
    report_error(f"unexpected {type(err).__name__}: {first}{hint}", EXIT_UNEXPECTED)
    return typer.Exit(EXIT_UNEXPECTED)


def command(fn):
    """Wrap a command: errors a user can cause become one line and the right exit code; output
    directories claimed by the command are released (and what a failed claim created removed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from minitron.io import held_outputs, release_outputs

        state.json = bool(kwargs.get("json_out"))
        held_before = held_outputs()
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
            return result
        except (typer.Exit, typer.Abort, SystemExit) as e:
            ok = getattr(e, "exit_code", getattr(e, "code", 1)) in (0, None)
            raise
        except KeyboardInterrupt:
            report_error("interrupted", 130)
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
            if state.raise_errors:
                raise
            raise fail(err) from None
        finally:
            release_outputs(failed=not ok, keep=held_before)

    return wrapper


def _default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(doc) -> str:
    return json.dumps(clean_floats(doc), indent=2, default=_default, allow_nan=False)


def emit_json(doc) -> None:
    """The one JSON document of a `--json` run, on stdout."""
    sys.stdout.write(to_json(doc) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- shared option types
# One vocabulary (README, "Options"): a flag means the same thing in every command that has it.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs stay on stderr); errors too.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
ComputeDtypeOpt = Annotated[str, typer.Option("--dtype", help="Compute dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def _shared(key: str, annotation):
    flag, help = VOCABULARY[key]
    return Annotated[annotation, typer.Option(flag, help=help)]


SeqLenOpt = _shared("seq_len", int | None)
ContextOpt = _shared("context_length", int | None)
SequencesOpt = _shared("sequences", int)
MemoryDtypeOpt = _shared("memory_dtype", str)
StateDtypeOpt = _shared("state_dtype", str | None)
EngineOpt = _shared("engine", str)
KvDtypeOpt = _shared("kv_dtype", str | None)
PrefillChunkOpt = _shared("prefill_chunk", int | None)
TensorParallelOpt = _shared("tensor_parallel", int)
HeadroomOpt = _shared("headroom", float | None)
ReserveOpt = _shared("reserve_gib", float | None)

RevisionOpt = Annotated[str | None, typer.Option(
    "--revision", help="Branch, tag or commit of a hub model id (same as MODEL@REVISION).")]


def with_revision(model, revision: str | None):
    """MODEL with `--revision` attached as `org/name@revision` (minitron.hub resolves it)."""
    return model if revision is None else f"{model}@{revision}"


def renamed(old: str, new: str, why: str = ""):
    """A hidden option for a flag that was renamed: using it is a one-line usage error naming the new one."""

    def reject(ctx, param, value):
        if value is not None:
            from typer._click.exceptions import UsageError

            raise UsageError(f"{old} was renamed to {new}{why}")
        return value

    return Annotated[str | None, typer.Option(old, hidden=True, callback=reject, expose_value=True)]
