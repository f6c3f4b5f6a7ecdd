"""Each verb's options are declared once, on its recipe's dataclass (`minitron.options`): the CLI's
flags, defaults and help are generated from those declarations, and every field is either a flag or
named here as library-only."""

from __future__ import annotations

import dataclasses

import pytest
import typer.main

from minitron.cli.main import app
from minitron.distill.trainer import TrainConfig
from minitron.evaluate.throughput import ThroughputSettings
from minitron.evaluate.vllm_check import VllmSettings
from minitron.options import UNSET, build, declared, option
from minitron.recipes.distill import DistillOptions
from minitron.recipes.eval import EvalOptions
from minitron.recipes.prune import PruneOptions
from minitron.recipes.score import ScoreOptions
from minitron.recipes.teacher_logits import TeacherLogitsOptions

# verb -> (options class, fields the command line never sets, the command's own parameters)
VERBS = {
    "score": (ScoreOptions, set(), {"model", "data", "out", "overwrite", "revision", "json_out"}),
    "prune": (PruneOptions, {"model", "budget"}, {"model", "revision", "json_out", "_dtype", "_batch_size", "_top_k"}),
    "distill": (DistillOptions, {"teacher_spec"}, {"json_out", "dry_run"}),
    "eval": (EvalOptions, {"models", "budget"}, {"models", "out", "overwrite", "revision", "json_out", "task_dir"}),
    "teacher-logits": (TeacherLogitsOptions, set(), {"json_out"}),
}
LIBRARY_ONLY = {TrainConfig: {"eval_batch_size", "autocast_dtype"}, ThroughputSettings: {"warmup", "seed"},
                VllmSettings: {"kv_cache_dtype", "timeout_s"}}


def _click(verb: str):
    return typer.main.get_command(app).commands[verb]


def _classes(cls):
    yield cls
    for f in dataclasses.fields(cls):
        if "cli_group" in f.metadata:
            yield from _classes(f.metadata["cli_group"].cls)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_field_is_a_flag_or_named_library_only(verb):
    cls, library_only, _ = VERBS[verb]
    for c in _classes(cls):
        unflagged = {f.name for f in dataclasses.fields(c) if not ({"cli", "cli_group"} & set(f.metadata))}
        assert unflagged == (library_only if c is cls else LIBRARY_ONLY.get(c, set())), c.__name__


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_the_command_has_exactly_the_declared_options_with_their_defaults_and_help(verb):
    cls, _, own = VERBS[verb]
    params = {p.name: p for p in _click(verb).params}
    decl = {d.name: d for d in declared(cls)}
    assert set(params) == set(decl) | own
    for name, d in decl.items():
        p = params[name]
        if p.param_type_name == "option":
            assert set(p.opts) | set(p.secondary_opts) == {x for n in d.flag.names for x in n.split("/")}
            assert p.help == d.flag.help
        else:
            assert d.flag.argument
        if d.default is UNSET or d.default is dataclasses.MISSING:
            assert p.required, name
        else:
            assert not p.required and p.default == d.default, (name, p.default, d.default)


def test_the_cli_default_is_the_library_default():
    """A library call and a command line without flags build the same options."""
    cli = {p.name: p.default for p in _click("score").params}
    assert ScoreOptions(**build(ScoreOptions, cli)) == ScoreOptions()
    cli = {p.name: p.default for p in _click("eval").params}
    assert EvalOptions(**build(EvalOptions, cli), models=["m"]) == EvalOptions(models=["m"])
    cli = {p.name: p.default for p in _click("prune").params}
    assert PruneOptions(**build(PruneOptions, cli), model="m") == PruneOptions(model="m")
    cli = {p.name: p.default for p in _click("distill").params} | {"steps": 5}
    kw = build(DistillOptions, cli)
    assert kw["train"] == TrainConfig(steps=5)


def test_flags_reach_their_fields_through_groups_parses_and_renames():
    kw = build(PruneOptions, {"hidden_size": 96, "candidates": 3, "sequences": 4, "memory_dtype": "fp8",
                              "target_params": "9B", "max_shard_size": "1MiB", "search": None})
    o = PruneOptions(**kw, model="m")
    assert (o.shape.hidden_size, o.top_k, o.batch_size, o.dtype) == (96, 3, 4, "fp8")
    assert (o.target_params, o.max_shard_bytes, o.search) == (9_000_000_000, 1 << 20, [])
    o = EvalOptions(**build(EvalOptions, {"throughput_batch_size": 7, "vllm": True, "vllm_tokens": 5, "limit": 3.0,
                                          "seed": 4, "kv_dtype": "fp8"}), models=["m"])
    assert (o.throughput_settings.batch_size, o.throughput_settings.seed, o.limit) == (7, 4, 3)
    assert (o.vllm.greedy_tokens, o.vllm.kv_cache_dtype) == (5, "fp8")
    assert EvalOptions(**build(EvalOptions, {"vllm": False, "vllm_tokens": 5}), models=["m"]).vllm is None
    t = build(DistillOptions, {"steps": 9, "lr": 0.5, "clip": 0.0})["train"]
    assert (t.steps, t.lr, t.clip) == (9, 0.5, None)


def test_a_name_declared_twice_is_refused_when_the_class_is_read():
    @dataclasses.dataclass
    class Inner:
        seed: int = option("--seed", default=0, help="a")

    @dataclasses.dataclass
    class Outer:
        seed: int = option("--seed", default=0, help="b")
        inner: Inner = dataclasses.field(default_factory=Inner, metadata={"cli_group": __import__(
            "minitron.options", fromlist=["Group"]).Group(Inner)})

    with pytest.raises(TypeError, match="seed"):
        declared(Outer)
