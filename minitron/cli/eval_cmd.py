"""`minitron eval`: teacher, pruned and distilled models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import (
    JsonOpt,
    OverwriteOpt,
    RevisionOpt,
    command,
    emit_json,
    info,
    stdout,
    with_revision,
)
from minitron.cli.options import with_options
from minitron.cli.progress import Progress
from minitron.recipes.eval import EvalOptions


def _print_task_dir(value: bool):
    if value:
        from minitron.evaluate.local_task import TASKS_DIR

        print(TASKS_DIR)
        raise typer.Exit()


@command
@with_options(EvalOptions)
def command(
    options,
    models: Annotated[list[Path], typer.Argument(help="Model directories; the first is the reference row.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output directory: eval.json (the --json document) and minitron.json.")] = None,
    overwrite: OverwriteOpt = False,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
    task_dir: Annotated[bool, typer.Option(
        "--task-dir", callback=_print_task_dir, is_eager=True,
        help="Print the directory of the bundled lm-eval tasks (for lm-eval --include_path) and exit.")] = False,
):
    """Compare models: loss and perplexity, KL to a teacher, lm-eval tasks, memory and throughput.

    One row per model; the first model is the reference and the others get relative figures
    (0.72x params, +0.08 nats loss, 1.31x decode tokens/s). Models are loaded one at a time.

    Perplexity: the --data text is tokenised without special tokens and cut into non-overlapping
    --seq-len blocks (the remainder dropped); each block is scored on its own. loss = mean next-token
    negative log-likelihood (nats) over all predicted tokens (seq-len - 1 per block); perplexity =
    exp(loss). KL = mean over the same positions of KL(teacher || model) of the next-token distributions.

    Tasks run through lm-evaluation-harness on the loaded model; local task YAMLs are found with
    --include-path and run offline. The package ships the multiple-choice task minitron_cloze.

    Memory: the memory model's figure (weights + KV + Mamba state) at --context-length in
    --memory-dtype, as a server would hold the model; the compute --dtype does not change it.

    Throughput: prefill of --prompt-len tokens, then --gen-len greedy decode steps through
    transformers' cache, --throughput-batch-size sequences at once, median of --throughput-runs
    runs; on a GPU also the peak memory beside the memory model's figure.

    vLLM (--vllm): each model is also loaded in vLLM (a separate environment, --vllm-python or
    $MINITRON_VLLM_PYTHON; docs/serving.md): its greedy tokens on a few prompts must equal
    transformers', the same throughput batch is generated in both engines, and vLLM's own cache
    bytes per sequence are set beside the memory model's --engine vllm figure.

    Examples:

      minitron eval teacher/ pruned/ distilled/ --data heldout.txt --teacher teacher/

      minitron eval teacher/ distilled/ --tasks minitron_cloze --limit 100

      minitron eval teacher/ pruned/ --tasks my_task --include-path my_tasks/ --num-fewshot 5

      minitron eval teacher/ pruned/ --throughput --prompt-len 2048 --gen-len 256 --device cuda

      minitron eval teacher/ pruned/ --data heldout.jsonl --seq-len 4096 --out eval/ --json

      minitron eval teacher/ pruned/ --vllm --vllm-python .venv-vllm/bin/python --gpu a10g --context-length 131072

      minitron eval --task-dir
    """
    from minitron.recipes.eval import evaluate_models

    opts = options(models=[with_revision(m, revision) for m in models])
    if out is not None:
        from minitron.io import check_output_dir

        check_output_dir(out, overwrite=overwrite, inputs=list(models) + [opts.teacher])
    with Progress(unit="blocks") as bar:
        doc = evaluate_models(opts, progress=bar.update, log=lambda m: bar.log(f"[dim]{m}[/dim]"))
    if out is not None:
        _write(out, doc, opts, overwrite)
    if json_out:
        emit_json(doc)
        return
    from minitron.cli.eval_table import render

    render(doc, stdout())
    if out is not None:
        info(f"wrote {out}")


def _write(out: Path, doc: dict, opts, overwrite: bool) -> None:
    from minitron.cli.common import to_json
    from minitron.io import atomic_output_dir, write_provenance

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "eval.json").write_text(to_json(doc) + "\n")
        inputs = {"models": [str(m) for m in opts.models], "teacher": str(opts.teacher) if opts.teacher else None,
                  "data": doc["settings"]["data_files"]}
        write_provenance(tmp, "eval", {k: v for k, v in vars(opts).items() if k not in ("throughput_settings", "budget", "vllm")},
                         inputs=inputs, result={"reference": doc["reference"], "models": [m["name"] for m in doc["models"]]})
