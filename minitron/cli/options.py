"""A command's Typer signature from its recipe's options dataclass (`minitron.options`).

    @command
    @with_options(ScoreOptions)
    def command(options, model: Annotated[Path, typer.Argument(...)], out: ..., json_out: JsonOpt = False):
        opts = options()           # ScoreOptions from every flag it declares
        ...

The command's own parameters are those only the CLI has (the output directory of a verb whose
recipe does not write it, --json, --revision); every other option comes from the dataclass, with
its flag, default and help as declared there. `options(**more)` builds the dataclass, `more` giving
the fields the command computes itself (a model path with its revision attached).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING
from typing import Annotated

import typer

from minitron.options import build, declared


def _parameter(d) -> inspect.Parameter:
    f = d.flag
    info = (typer.Argument(help=f.help, hidden=f.hidden) if f.argument
            else typer.Option(*f.names, help=f.help, hidden=f.hidden))  # fmt: skip
    default = inspect.Parameter.empty if d.default is MISSING else d.default
    return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[d.type, info])


def with_options(cls: type):
    """Decorate a command `fn(options, **own)`: its signature becomes its own parameters (the required
    ones first, those with defaults last) around one parameter per option of `cls`."""
    decl = declared(cls)
    names = {d.name for d in decl}

    def deco(fn):
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]  # [0] is `options`
        clash = names & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__module__}: parameters also declared by {cls.__name__}: {sorted(clash)}")
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p for p in own if p.default is not inspect.Parameter.empty]
        params = required + [_parameter(d) for d in decl] + optional

        @functools.wraps(fn)
        def wrapper(**kwargs):
            values = {n: kwargs.pop(n) for n in names if n in kwargs}
            return fn(functools.partial(_make, cls, values), **kwargs)

        del wrapper.__wrapped__  # Typer reads the signature below, not fn's
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return deco


def _make(cls, values: dict, **more):
    return cls(**build(cls, values), **more)
