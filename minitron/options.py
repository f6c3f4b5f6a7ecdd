"""Each verb's options, declared once: on the recipe's options dataclass.

A field made with `option()` carries its command-line flag, its help and, where the command line
spells the value differently (a size as text, a list that may be absent), the type the CLI parses
and the function that turns it into the field's value. `group()` nests a dataclass whose own fields
are options (the distillation's `TrainConfig`, the shape of `prune`). `minitron.cli.options` turns a
dataclass into a Typer signature from these declarations, so the flag, its default and its help are
written in one place and the CLI can neither drift from the library nor forget a field.

This module knows nothing of Typer: the declarations are plain data, readable by anything that wants
to list a verb's options (the docs, the tests).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # a Flag without a default of its own (dataclasses' MISSING cannot be a field's default)


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line."""

    names: tuple[str, ...]  # "--samples", or ("--out", "-o"); a bool switch: ("--streaming/--no-streaming",)
    help: str
    type: object = None  # what the CLI parses, where it differs from the field's type (e.g. `str` for "5GB")
    parse: Callable | None = None  # the CLI's value -> the field's value (not called on None)
    default: object = UNSET  # the CLI's default, where it differs from the field's (or the field has none)
    argument: bool = False  # a positional argument
    hidden: bool = False


@dataclass(frozen=True)
class Group:
    """A nested options dataclass; `enable`: a switch that builds it (else the field is None)."""

    cls: type
    enable: Flag | None = None


def option(*names: str, help: str, default=MISSING, default_factory=MISSING, type=None, parse=None,
           cli_default=UNSET, argument: bool = False, hidden: bool = False):
    """A dataclass field that is also a command-line option (see the module docstring)."""
    kw = {} if default_factory is MISSING else {"default_factory": default_factory}
    if default is not MISSING:
        kw["default"] = default
    flag = Flag(tuple(names), help, type=type, parse=parse, default=cli_default, argument=argument, hidden=hidden)
    return dataclasses.field(metadata={"cli": flag}, **kw)


def group(cls: type, *, enable: Flag | None = None, required: bool = False):
    """A field holding a nested options dataclass (its flags are the command's too); `enable`: built only
    when that switch is given (else None); `required`: no default (the nested class has required fields)."""
    kw = {} if required else {"default": None} if enable is not None else {"default_factory": cls}
    return dataclasses.field(metadata={"cli_group": Group(cls, enable)}, **kw)


def switch(name: str, help: str) -> Flag:
    """The `enable` flag of an optional `group()`."""
    return Flag((name,), help, type=bool, default=False)


# One vocabulary (README, "Options"): a flag means the same in every command that has it. The commands
# whose options are dataclasses use `shared()`; the Typer-only ones (`inspect`) read the same entries.
VOCABULARY: dict[str, tuple[str, str]] = {
    "seq_len": ("--seq-len", "Tokens per data block (default: min(2048, max_position_embeddings))."),
    "context_length": ("--context-length",
                       "Memory model: tokens per sequence (default: the model's max_position_embeddings)."),
    "sequences": ("--sequences", "Memory model: sequences held at once."),
    "memory_dtype": ("--memory-dtype", "Memory model: dtype of the weights (fp8, bf16, fp16 or fp32)."),
    "state_dtype": ("--state-dtype", "Memory model: Mamba SSM state dtype (default: the config's mamba_ssm_cache_dtype)."),
    "engine": ("--engine", "Memory model: the serving engine whose terms count: vllm, hf (transformers), or none "
                           "(the model alone)."),
    "kv_dtype": ("--kv-dtype", "Memory model: KV-cache dtype, fp8 or bf16 (vLLM's --kv-cache-dtype; default: as the "
                               "activations)."),
    "prefill_chunk": ("--prefill-chunk", "Memory model (vllm): tokens per prefill chunk (default 2048; hf: the whole "
                                         "context)."),
    "tensor_parallel": ("--tensor-parallel", "GPUs vLLM shards the model over: widths must divide (docs/serving.md); "
                                             "memory per GPU."),
    "headroom": ("--headroom", "Fraction of the GPU kept free (default with --gpu: 1 - the engine's usable share, "
                               "vllm 0.08)."),
    "reserve_gib": ("--reserve-gib", "GiB reserved (default with --gpu: the CUDA context, 1.0)."),
}


def shared(key: str, *, default, **kw):
    """An `option()` from `VOCABULARY`: the flag and help every command shares."""
    flag, help = VOCABULARY[key]
    return option(flag, help=help, default=default, **kw)


@dataclass(frozen=True)
class Declared:
    """One command-line option of a dataclass, as `declared()` lists them."""

    name: str  # the Python parameter name: the long flag's (unique across the groups of one verb)
    path: tuple[str, ...]  # the fields leading to it: ("train", "lr")
    flag: Flag
    type: object  # what the CLI parses
    default: object  # the CLI's default (MISSING: required)


def field_type(cls: type, f: dataclasses.Field):
    """The evaluated annotation of one field (annotations are strings under `from __future__`)."""
    t = f.type
    if isinstance(t, str):
        t = eval(t, vars(sys.modules[cls.__module__]))  # noqa: S307 - the module's own annotation
    return t


def param_name(flag: Flag) -> str:
    """The parameter name of a flag: `--throughput-batch-size` -> throughput_batch_size."""
    long = next(n for n in flag.names if n.startswith("--")) if not flag.argument else flag.names[0]
    return long.split("/")[0].lstrip("-").replace("-", "_")


def cli_default(f: dataclasses.Field, flag: Flag):
    if flag.default is not UNSET:
        return flag.default
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # a list: absent on the command line, the factory's value after
        return None
    return MISSING


def declared(cls: type, path: tuple[str, ...] = ()) -> list[Declared]:
    """Every command-line option of `cls`, nested groups expanded, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        if "cli" in f.metadata:
            flag = f.metadata["cli"]
            t = flag.type or field_type(cls, f)
            if f.default is MISSING and f.default_factory is not MISSING and flag.type is None:
                t = t | None  # an absent list: None on the command line
            out.append(Declared(param_name(flag), (*path, f.name), flag, t, cli_default(f, flag)))
        elif "cli_group" in f.metadata:
            g = f.metadata["cli_group"]
            if g.enable is not None:
                out.append(Declared(param_name(g.enable), (*path, f.name), g.enable, bool, g.enable.default))
            out += declared(g.cls, (*path, f.name))
    names = [d.name for d in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise TypeError(f"{cls.__name__}: option names used twice: {sorted(dupes)}")
    return out


def build(cls: type, values: dict) -> dict:
    """The keyword arguments of `cls` from the command line's `values` (by `declared()` name): parsed,
    groups constructed, absent lists left to their factories. Fields without a flag are not set."""
    kw = {}
    for f in dataclasses.fields(cls):
        if "cli" in f.metadata:
            flag = f.metadata["cli"]
            name = param_name(flag)
            if name not in values:
                continue
            v = values[name]
            if v is None and f.default_factory is not MISSING:
                continue
            kw[f.name] = flag.parse(v) if flag.parse is not None and v is not None else v
        elif "cli_group" in f.metadata:
            g = f.metadata["cli_group"]
            if g.enable is not None and not values.get(param_name(g.enable)):
                kw[f.name] = None
                continue
            kw[f.name] = g.cls(**build(g.cls, values))
    return kw


__all__ = ["VOCABULARY", "Declared", "Flag", "Group", "build", "declared", "group", "option", "shared", "switch"]
