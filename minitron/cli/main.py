"""`minitron`: the Typer application and its entry point."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Annotated

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer >= 0.29 vendors click
from typer.core import TyperGroup, TyperOption

from minitron import __version__
from minitron.cli.common import report_error, setup_logging
from minitron.errors import EXIT_USAGE

HELP = """Compress hybrid Mamba-Transformer (Nemotron-H) models the Minitron way.

Plain Hugging Face checkpoints in, plain Hugging Face checkpoints out.

  minitron demo

  minitron inspect nemotron-nano-12b-v2-base --gpu a10g --context-length 131072

  minitron score MODEL --data train.txt --samples 64 --out scores/

  minitron prune MODEL --scores scores/ --gpu a10g --context-length 131072 --out pruned/

  minitron distill --teacher MODEL --student pruned/ --data train.txt --steps 1000 --out distilled/

  minitron eval MODEL pruned/ distilled/ --data heldout.txt --teacher MODEL

-q/--quiet and -v/--verbose work before or after the command name. Shell completion:
minitron --install-completion.
"""

_GLOBAL_FLAGS = {"-q", "--quiet", "-v", "--verbose"}


def _is_global_flag(arg: str) -> bool:
    return arg in _GLOBAL_FLAGS or (arg.startswith("-v") and set(arg[1:]) == {"v"})


def hoist_global_flags(argv: list[str], group: TyperGroup) -> list[str]:
    """Move -q/-v given after the command name in front of it (where click expects them).

    Option values are skipped, so `--text-field -v` keeps `-v` as the value.
    """
    cmd_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if cmd_at is None or argv[cmd_at] not in group.commands:
        return argv
    cmd = group.commands[argv[cmd_at]]
    takes_value = {o for p in cmd.params if isinstance(p, TyperOption) and not p.is_flag and not p.count
                   for o in p.opts}  # fmt: skip
    head, rest, hoisted = argv[: cmd_at + 1], [], []
    i = cmd_at + 1
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if _is_global_flag(a):
            hoisted.append(a)
        else:
            rest.append(a)
            if a in takes_value and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        i += 1
    return head[:cmd_at] + hoisted + head[cmd_at:] + rest




def _flags_without_type(get_params):
    """Wrap `get_params` (which also yields the options typer adds late: --help, completion) so that
    flags show no `<bool>` type in --help: they take no value."""

    def wrapped(ctx):
        params = get_params(ctx)
        for p in params:
            if isinstance(p, TyperOption) and (p.is_flag or p.count):
                p.metavar = ""
        return params

    return wrapped


class MinitronGroup(TyperGroup):
    """The command group: -q/-v anywhere, usage errors as one `error:` line (JSON under --json),
    flags shown without a `<bool>` type in --help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for cmd in self.commands.values():
            cmd.epilog = "-q/--quiet and -v/--verbose may also be given here."
            cmd.get_params = _flags_without_type(cmd.get_params)

    def get_params(self, ctx):
        return _flags_without_type(super().get_params)(ctx)

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_global_flags(list(args), self))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in args
        try:
            rv = super().main(args=args, prog_name=prog_name or "minitron", complete_var=complete_var,
                              standalone_mode=False, **extra)  # fmt: skip
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except NoArgsIsHelpError as e:
            e.show()  # the command's help, as click does for a command run without its arguments
            sys.exit(EXIT_USAGE)
        except UsageError as e:
            path = e.ctx.command_path if e.ctx is not None else "minitron"
            report_error(f"{e.format_message()} (see '{path} --help')", EXIT_USAGE, as_json=as_json)
            sys.exit(EXIT_USAGE)
        except typer.Abort:  # pragma: no cover
            report_error("interrupted", 130, as_json=as_json)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="minitron",
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=MinitronGroup,
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


# Each command lives in its own module `minitron.cli.<name>_cmd` exposing `command`. A command that
# runs with no arguments at all (demo) sets `RUNS_WITHOUT_ARGS = True`; the others print their help.
COMMANDS = ("inspect", "score", "prune", "distill", "teacher-logits", "eval", "run", "demo")
for _name in COMMANDS:
    _mod = importlib.import_module(f"minitron.cli.{_name.replace('-', '_')}_cmd")
    app.command(_name, help=_mod.command.__doc__, no_args_is_help=not getattr(_mod, "RUNS_WITHOUT_ARGS", False))(
        _mod.command
    )

def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (also `python -m minitron` and `torchrun -m minitron`)."""
    try:
        app(args=argv, prog_name="minitron")
    except KeyboardInterrupt:  # pragma: no cover
        report_error("interrupted", 130)
        sys.exit(130)


if __name__ == "__main__":
    main()
