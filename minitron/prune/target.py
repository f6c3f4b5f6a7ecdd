"""`Target`: what a prune is asked to reach, parsed and validated once, then handed down as one object.

Two kinds, and room for more:

- **exact**: a resolved `Shape` (every width filled in from the model) and a depth: the layers to
  drop (`--drop-layers`), or how many to keep (`--num-layers`, chosen by the layer scores, or
  `--iterative`ly re-scored);
- **search**: any of a parameter budget, an active-parameter budget and a memory budget (all must
  hold), over a search space (`--search`, on top of `default_space`) with a drop order for depth.

Both carry the `Serving` settings the memory figures are computed with (context, sequences, dtypes,
engine, tensor parallelism) and the layer-type minimums of `--keep-layer-types`. Everything a user
can get wrong in these flags fails in `parse_target`, with the flag named, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from minitron.axes import FLAGS
from minitron.errors import InputError
from minitron.memory import Budget, Serving
from minitron.models.architecture import Architecture
from minitron.models.layer_types import layer_char
from minitron.prune.search import Range, parse_search
from minitron.prune.select import Shape, check_drop, shape_arch, validate_shape
from minitron.tensor_parallel import impossible as tp_impossible
from minitron.tensor_parallel import problems as tp_problems


@dataclass(frozen=True)
class Target:
    serving: Serving
    keep_min: dict[str, int] = field(default_factory=dict)
    # exact
    shape: Shape | None = None  # resolved (None: a search)
    drop_layers: tuple[int, ...] | None = None
    num_layers: int | None = None
    iterative: bool = False
    # search: every limit given must hold
    params: int | None = None
    active_params: int | None = None
    budget: Budget | None = None
    search: dict[str, Range] = field(default_factory=dict)  # the axes given with --search
    drop_order: tuple[int, ...] | None = None

    @property
    def searching(self) -> bool:
        return self.shape is None

    def fits(self, params: int, active_params: int, memory_bytes: int) -> bool:
        """Whether a candidate with these figures meets every limit of the target."""
        return ((self.budget is None or memory_bytes <= self.budget.budget_bytes)
                and (self.params is None or params <= self.params)
                and (self.active_params is None or active_params <= self.active_params))

    def record(self, asked: Shape | None = None, drop_layers_text: str | None = None) -> dict:
        """What was asked for, as the `target` object of `prune --json` and minitron.json.

        A search's `kind` names its limits, joined by `+` when several must hold (`params+active_params`).
        """
        if self.searching:
            kinds, out = [], {}
            if self.params is not None:
                kinds.append("params")
                out["target_params"] = self.params
            if self.active_params is not None:
                kinds.append("active_params")
                out["target_active_params"] = self.active_params
            if self.budget is not None:
                kinds.append("memory")
                out.update(budget_bytes=self.budget.budget_bytes, gpu=self.budget.gpu, **self.serving.to_dict())
            return {"kind": "+".join(kinds), **out}
        exact = {k: v for k, v in asdict(asked or Shape()).items() if v is not None}
        if self.num_layers is not None:
            exact["num_layers"] = self.num_layers
        if drop_layers_text is not None:
            exact["drop_layers"] = drop_layers_text
        return {"kind": "exact", **exact, "iterative": self.iterative}


def parse_target(arch: Architecture, *, serving: Serving, shape: Shape, num_layers: int | None = None,
                 drop_layers: str | None = None, iterative: bool = False, keep_layer_types: str | None = None,
                 target_params: int | None = None, target_active_params: int | None = None,
                 budget: Budget | None = None, search: list[str] | None = None,
                 drop_order: str | None = None) -> Target:
    """The target of `arch` from the option values (CLI text for the lists), every rule checked once."""
    searching = target_params is not None or target_active_params is not None or budget is not None
    exact = not shape.is_empty() or num_layers is not None or drop_layers is not None
    if exact and searching:
        given = [FLAGS[k] for k, v in asdict(shape).items() if v is not None]
        given += [f for f, v in (("--num-layers", num_layers), ("--drop-layers", drop_layers)) if v is not None]
        raise InputError("exact sizes and a searched target (--target-params / --target-active-params / memory "
                         "budget) cannot be combined; restrict the search with --search AXIS=MIN:MAX instead",
                         flag=given[0])
    if not exact and not searching:
        raise InputError("no target: give sizes (--hidden-size, --ffn-size, --experts, ..., --num-layers, "
                         "--drop-layers), --target-params, --target-active-params, or --memory-budget / --gpu",
                         flag="--target-params")
    if num_layers is not None and drop_layers is not None:
        raise InputError("give --num-layers or --drop-layers, not both", flag="--drop-layers")
    if (search or drop_order) and not searching:
        flag = "--search" if search else "--drop-order"
        raise InputError("only used with --target-params, --target-active-params or a memory budget", flag=flag)
    if iterative and num_layers is None:
        raise InputError("re-scoring between removals needs --num-layers", flag="--iterative")
    serving.estimate(arch)  # validates the context, the sequences, the dtypes and the tensor-parallel size
    why = tp_impossible(arch, serving.tensor_parallel)
    if why:
        raise InputError(why, flag="--tensor-parallel")
    keep_min = parse_keep_types(keep_layer_types)
    if "*" in arch.pattern:
        # transformers' cache (generate) fails on a Nemotron-H with no attention layer left
        # (`get_seq_length` needs one): keep one unless the user says `attention=0`.
        keep_min.setdefault("*", 1)
    if searching:
        if target_params is not None and target_params >= arch.total_params:
            raise InputError(f"{target_params:,} is not below the model's {arch.total_params:,} parameters",
                             flag="--target-params")
        if target_active_params is not None and target_active_params >= arch.total_active_params:
            raise InputError(f"{target_active_params:,} is not below the model's {arch.total_active_params:,} "
                             "active parameters per token", flag="--target-active-params")
        order = None if drop_order is None else tuple(parse_layer_list(drop_order, arch.num_layers, "--drop-order"))
        return Target(serving=serving, keep_min=keep_min, params=target_params, active_params=target_active_params,
                      budget=budget, search=parse_search(search), drop_order=order)
    resolved = validate_shape(arch, shape)
    broken = tp_problems(shape_arch(arch, resolved), serving.tensor_parallel)
    if broken:  # checked before any work; the search lists only shardable shapes
        flag, rule = broken[0]
        raise InputError(f"{rule}: vLLM cannot shard it over {serving.tensor_parallel} GPUs", flag=flag)
    dropped = None
    if drop_layers is not None:
        dropped = tuple(parse_layer_list(drop_layers, arch.num_layers, "--drop-layers"))
        check_drop(arch, dropped, keep_min, "--drop-layers")
    if num_layers is not None and not 1 <= num_layers <= arch.num_layers:
        raise InputError(f"must be in 1..{arch.num_layers}, got {num_layers}", flag="--num-layers")
    return Target(serving=serving, keep_min=keep_min, shape=resolved, drop_layers=dropped, num_layers=num_layers,
                  iterative=iterative)


# ---------------------------------------------------------------------- CLI text
def parse_layer_list(text: str, num_layers: int, flag: str) -> list[int]:
    """`7,8,17` -> [7, 8, 17] (0-based, in the given order); errors name the flag."""
    try:
        out = [int(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise InputError(f"expected comma-separated 0-based layer indices, got {text!r}", flag=flag) from None
    if not out:
        raise InputError("no layer indices given", flag=flag)
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range (the model has {num_layers} layers: 0..{num_layers - 1})",
                         flag=flag)
    if len(set(out)) != len(out):
        raise InputError("a layer is listed twice", flag=flag)
    return out


def parse_keep_types(text: str | None) -> dict[str, int]:
    """`--keep-layer-types attention=4,mamba=20` (or `*=4,M=20`) -> {"*": 4, "M": 20}."""
    if not text:
        return {}
    out = {}
    for item in str(text).split(","):
        name, sep, n = item.partition("=")
        try:
            out[layer_char(name.strip())] = int(n)
            if not sep or int(n) < 0:
                raise ValueError
        except (ValueError, InputError):
            raise InputError(f"expected TYPE=MIN items like attention=4,mamba=20; got {item!r}",
                             flag="--keep-layer-types") from None
    return out
