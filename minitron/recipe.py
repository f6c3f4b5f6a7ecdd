"""Recipe files for `minitron run`: one YAML names the teacher and the options of every stage.

    model: nemotron-nano-12b-v2-base     # a directory, a bundled name or a hub id
    revision: main                       # optional, for a hub id
    out: runs/12b-to-9b                  # the output tree (`--out` of `run` overrides it)
    score:   {data: [calib.jsonl], samples: 1024}
    prune:   {gpu: a10g, headroom: 0.05, reserve-gib: 1.3, context-length: 131072}
    distill: {data: [train.jsonl], steps: 2000, lr: 1e-4}
    eval:    {data: [heldout.txt], tasks: minitron_cloze}

Every key of a stage is the long flag of that stage's command without `--` (`seq-len`, `data`,
`target-params`, ...; `_` may stand for `-`): one vocabulary with the CLI, checked against the
command itself. A list gives a repeatable flag, `true` a switch (`false` leaves it off). The run
fills in what links the stages: score's `MODEL` and `--out`, prune's `--scores`, distill's
`--teacher`/`--student`, eval's models and `--teacher`; a recipe that sets one of those is refused.
Input paths are relative to the recipe file, `out` to the working directory (`minitron run demo`
writes ./minitron-demo); `{assets}` is the package's bundled assets directory. Stages
may be left out (a recipe of `prune` alone, with `dry-run: true`, checks a target on a bare config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from minitron.errors import InputError

STAGES = ("score", "prune", "distill", "eval")
TOP_KEYS = {"model", "revision", "out", *STAGES}
# Options the run itself sets, per stage: the links between the stages.
LINKS = {
    "score": {"model", "out", "revision"},
    "prune": {"model", "out", "scores", "revision"},
    "distill": {"teacher", "student", "out"},
    "eval": {"models", "teacher", "out", "revision"},
}
FLAG = "RECIPE"


@dataclass
class Recipe:
    path: Path
    base: Path  # the recipe's directory: relative paths start here
    model: str
    revision: str | None
    out: Path
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> {flag name: value}, in STAGES order


def _expand(value):
    from minitron.assets import ASSETS

    if isinstance(value, str) and "{assets}" in value:
        return value.replace("{assets}", str(ASSETS))
    return value


def load(path: str | Path, *, out: Path | None = None) -> Recipe:
    """Read and shape-check a recipe (keys, nesting); option values are checked by `run` against the commands."""
    import yaml

    path = Path(path)
    if not path.is_file():
        from minitron.assets import ASSETS

        bundled = ASSETS / "recipes" / f"{path}.yaml"
        if not bundled.is_file():
            raise InputError(f"no such recipe file: {path}", flag=FLAG)
        path = bundled
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}", flag=FLAG) from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a recipe is a mapping of keys (model, out, score, prune, distill, eval)", flag=FLAG)
    unknown = sorted(set(map(str, doc)) - TOP_KEYS)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} (a recipe has {', '.join(sorted(TOP_KEYS))})", flag=unknown[0])
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise InputError("the teacher model is required: a directory, a bundled name or a hub id", flag="model")
    if doc.get("revision") is not None and not isinstance(doc["revision"], str | int):
        raise InputError("must be a branch, tag or commit", flag="revision")
    if out is None and not isinstance(doc.get("out"), str):
        raise InputError("the output directory is required (in the recipe, or run --out)", flag="out")
    base = path.resolve().parent
    stages = {}
    for name in STAGES:
        if name not in doc:
            continue
        body = doc[name] if doc[name] is not None else {}
        if not isinstance(body, dict):
            raise InputError(f"must be a mapping of {name}'s options (flag names without --)", flag=name)
        opts = {}
        for k, v in body.items():
            key = str(k).replace("_", "-")
            if key in LINKS[name]:
                raise InputError("is set by the run (it links the stages); remove it from the recipe",
                                 flag=f"{name}.{key}")  # fmt: skip
            opts[key] = [_expand(x) for x in v] if isinstance(v, list) else _expand(v)
        stages[name] = opts
    if not stages:
        raise InputError("no stage: give at least one of score, prune, distill, eval", flag=FLAG)
    model = _expand(doc["model"])
    local = base / model
    if not Path(model).is_absolute() and local.exists():
        model = str(local)
    out_dir = out if out is not None else Path(_expand(doc["out"]))  # relative to where `run` runs
    rev = None if doc.get("revision") is None else str(doc["revision"])
    return Recipe(path=path, base=base, model=model, revision=rev, out=out_dir, stages=stages)


def stage_dir(recipe: Recipe, stage: str) -> Path:
    return recipe.out / {"score": "scores", "prune": "pruned", "distill": "distilled", "eval": "eval"}[stage]


def check_links(recipe: Recipe) -> None:
    """Each stage's inputs must come from a stage that writes them."""
    s = recipe.stages
    prune_dry = bool(s.get("prune", {}).get("dry-run"))
    if "prune" in s and not prune_dry and "score" not in s:
        raise InputError("prune writes weights from score's scores: add a score stage (or dry-run: true)",
                         flag="prune")  # fmt: skip
    if "distill" in s and ("prune" not in s or prune_dry):
        raise InputError("distill trains prune's output, which this recipe does not write (no prune stage, "
                         "or prune.dry-run)", flag="distill")  # fmt: skip
