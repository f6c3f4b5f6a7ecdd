"""lm-evaluation-harness through its Python API, on a model that is already loaded.

`resolve_tasks()` checks the task names before any model is loaded: the local task directories
(the package's own `minitron/assets/tasks/` and every `--include-path`) are indexed first, which is
instant; lm-eval's built-in index (thousands of YAMLs, seconds) is only read when a name is not found
locally. When every task is local, the offline switches of the hub and of `datasets` are turned on, so
that a local task never touches the network; standard tasks (mmlu, hellaswag, ...) run unchanged, and
download their data, when the machine is online.

Local task YAMLs are ordinary lm-eval configs; their data can be local files, e.g.

    dataset_path: json
    dataset_kwargs: {data_files: {test: /abs/path/items.jsonl}}

(relative `data_files` are read from the current directory), or a `custom_dataset: !function` hook
beside the YAML, as the shipped `minitron_cloze` task does (see `local_task.py`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from minitron.errors import InputError
from minitron.evaluate.local_task import TASKS_DIR

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class TaskPlan:
    """Validated task names and the lm-eval TaskManager that knows them."""

    names: list[str]
    include_paths: list[Path]
    local: bool  # every task is defined under a local include path
    manager: object = field(repr=False, default=None)


def parse_tasks(text: str | None) -> list[str]:
    """`"a,b, c"` -> ["a", "b", "c"] (order kept, duplicates dropped)."""
    if text is None:
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InputError("no task names given", flag="--tasks")
    return list(dict.fromkeys(names))


def set_offline() -> None:
    """Turn on the offline switches of huggingface_hub and datasets (also when already imported)."""
    for k in OFFLINE_ENV:
        os.environ[k] = "1"
    import sys

    if "datasets" in sys.modules:
        import datasets

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True


def resolve_tasks(tasks: list[str], include_path: list[Path] | None = None) -> TaskPlan:
    """Check every task name (and `--include-path`) before heavy work; unknown names are one-line errors."""
    include_path = list(include_path or [])
    for p in include_path:
        if not Path(p).is_dir():
            raise InputError(f"no such directory: {p}", flag="--include-path")
    if include_path and not tasks:
        raise InputError("--include-path only matters with --tasks", flag="--include-path")
    paths = [TASKS_DIR, *map(Path, include_path)]
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
    missing = [t for t in tasks if t not in manager.all_tasks]
    local = not missing
    if missing:
        manager = TaskManager(include_path=[str(p) for p in paths], include_defaults=True)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            hint = (
                "; for local task YAMLs give --include-path DIR"
                if not include_path
                else f"; not in lm-eval's tasks nor under {', '.join(map(str, include_path))}"
            )
            raise InputError(f"unknown task(s): {', '.join(unknown)}{hint}", flag="--tasks")
    return TaskPlan(names=list(tasks), include_paths=paths, local=local, manager=manager)


def _metrics(entry: dict) -> dict:
    """lm-eval's `{"acc,none": .., "acc_stderr,none": .., "alias": ..}` -> `{"acc": .., "acc_stderr": ..}`."""
    out = {}
    for key, value in entry.items():
        if key in ("alias", "name", "sample_len") or not isinstance(value, (int, float)):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt in ("", "none") else f"{metric},{filt}"] = value
    if "sample_len" in entry:
        out["samples"] = entry["sample_len"]
    return out


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Unless `verbose`: lm-eval's progress bars and notices (written straight to sys.stderr) are
    dropped, and lm-eval does not run `git describe` in the current directory (it records the caller's
    git hash, and git prints "fatal: not a git repository" outside one). Exceptions still propagate."""
    if verbose:
        yield
        return
    import io

    import lm_eval.evaluator as ev

    saved_git = ev.get_git_commit_hash
    ev.get_git_commit_hash = lambda: None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        ev.get_git_commit_hash = saved_git


def run_tasks(
    model,
    tokenizer,
    plan: TaskPlan,
    *,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, dict]:
    """Run `plan`'s tasks on an already-loaded HF model; `{task: {metric: value}}` for every task and group."""
    if plan.local:
        set_offline()
    import datasets
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    with _quiet(verbose):
        if not verbose:
            datasets.disable_progress_bars()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = evaluator.simple_evaluate(
            model=lm,
            tasks=plan.names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=plan.manager,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:  # non-zero rank in a distributed launch
        return {}
    table = dict(results.get("results", {}))
    table.update(results.get("groups", {}) or {})
    return {name: _metrics(entry) for name, entry in table.items()}
