"""`minitron`: the Typer application and its entry point."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Annotated

import typer

from minitron import __version__
from minitron.cli.common import setup_logging

HELP = """Compress hybrid Mamba-Transformer (Nemotron-H) models the Minitron way.

Plain Hugging Face checkpoints in, plain Hugging Face checkpoints out.

  minitron inspect ../shared/reference/nemotron-nano-12b-v2-base --gpu a10g

  minitron score MODEL --data train.txt --out scores/

  minitron prune MODEL --scores scores/ --gpu a10g --context-length 131072 --out pruned/

  minitron distill --teacher MODEL --student pruned/ --data train.txt --out distilled/

  minitron eval MODEL pruned/ distilled/ --data heldout.txt --teacher MODEL
"""

app = typer.Typer(
    name="minitron",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        print(f"minitron {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: library logs too).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    setup_logging(verbose=verbose, quiet=quiet)


# Each command lives in its own module `minitron.cli.<name>` exposing `command` (and optionally `NAME`).
COMMANDS = ("inspect", "score", "prune", "distill", "teacher-logits", "eval", "demo")
for _name in COMMANDS:
    if importlib.util.find_spec(f"minitron.cli.{_name.replace('-', '_')}_cmd") is not None:
        _mod = importlib.import_module(f"minitron.cli.{_name.replace('-', '_')}_cmd")
        app.command(_name, help=_mod.command.__doc__, no_args_is_help=getattr(_mod, "NO_ARGS_IS_HELP", True))(
            _mod.command
        )


def main() -> None:
    """Console-script entry point (also `python -m minitron` and `torchrun -m minitron`)."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
