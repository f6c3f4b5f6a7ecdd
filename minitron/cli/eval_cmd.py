"""`minitron eval`: teacher, pruned and distilled models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import JsonOpt, OverwriteOpt, command, emit_json, info, progress, stdout, to_json
from minitron.errors import InputError


class _RichReporter:
    """Progress bars (stderr) and log lines for `evaluate_models`."""

    def __init__(self):
        self._bar = None
        self._task = None

    def start(self, description: str, total: int) -> None:
        self._bar = progress()
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, status="blocks")

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def log(self, message: str) -> None:
        info(f"[dim]{message}[/dim]")


def _check_out_file(out: Path | None, overwrite: bool) -> None:
    if out is None:
        return
    if out.exists() and out.is_dir():
        raise InputError(f"{out} is a directory; give a file name for the JSON", flag="--out")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists (use --overwrite to replace it)", flag="--out")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise InputError(f"no such directory: {parent}", flag="--out")


@command
def command(
    models: Annotated[list[Path], typer.Argument(help="Model directories; the first is the reference row.")],
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Held-out text (.txt, .jsonl, .parquet) for loss and perplexity."),
    ] = None,
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="Tokens per block (non-overlapping; remainder dropped).")
    ] = 2048,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Score only the first N blocks (default all).")
    ] = None,
    text_field: Annotated[
        str, typer.Option("--text-field", help="Field of .jsonl / column of .parquet data.")
    ] = "text",
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Also report KL(teacher || model) per token on --data.")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="lm-eval tasks, comma-separated (minitron_cloze is shipped)."),
    ] = None,
    include_path: Annotated[
        list[Path] | None,
        typer.Option("--include-path", help="Directory of local lm-eval task YAMLs (repeatable)."),
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option("--num-fewshot", help="Few-shot examples (task default).")
    ] = None,
    limit: Annotated[
        float | None,
        typer.Option("--limit", help="Items per task: a count, or a fraction below 1 (testing)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Blocks / lm-eval requests per forward pass.")
    ] = 1,
    throughput: Annotated[
        bool, typer.Option("--throughput", help="Measure prefill and decode tokens/s.")
    ] = False,
    prompt_len: Annotated[
        int, typer.Option("--prompt-len", help="Prompt tokens per sequence (throughput).")
    ] = 512,
    gen_len: Annotated[
        int, typer.Option("--gen-len", help="Decode steps after the prompt (throughput).")
    ] = 128,
    throughput_batch_size: Annotated[
        int, typer.Option("--throughput-batch-size", help="Sequences decoded at once (throughput).")
    ] = 1,
    throughput_runs: Annotated[
        int, typer.Option("--throughput-runs", help="Measured runs; the median is reported.")
    ] = 3,
    context_length: Annotated[
        int, typer.Option("--context-length", help="Context length of the memory model's figure.")
    ] = 131072,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")
    ] = "auto",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of lm-eval's few-shot sampling and the throughput prompt.")
    ] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON document to this file.")] = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
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

    Throughput: prefill of --prompt-len tokens, then --gen-len greedy decode steps through
    transformers' cache, --throughput-batch-size sequences at once, median of --throughput-runs
    runs; on a GPU also the peak memory beside the memory model's figure.

    Examples:

      minitron eval teacher/ pruned/ distilled/ --data heldout.txt --teacher teacher/

      minitron eval teacher/ distilled/ --tasks minitron_cloze --limit 100

      minitron eval teacher/ pruned/ --tasks my_task --include-path my_tasks/ --num-fewshot 5

      minitron eval teacher/ pruned/ --throughput --prompt-len 2048 --gen-len 256 --device cuda

      minitron eval teacher/ pruned/ --data heldout.jsonl --seq-len 4096 --out eval.json --json
    """
    from minitron.evaluate.compare import EvalOptions, evaluate_models
    from minitron.evaluate.throughput import ThroughputSettings

    _check_out_file(out, overwrite)
    opts = EvalOptions(
        models=list(models),
        data=list(data or []),
        seq_len=seq_len,
        samples=samples,
        text_field=text_field,
        batch_size=batch_size,
        teacher=teacher,
        tasks=tasks,
        include_path=list(include_path or []),
        num_fewshot=num_fewshot,
        limit=int(limit) if limit is not None and limit >= 1 and float(limit).is_integer() else limit,
        throughput=throughput,
        throughput_settings=ThroughputSettings(
            prompt_len=prompt_len,
            gen_len=gen_len,
            batch_size=throughput_batch_size,
            runs=throughput_runs,
            seed=seed,
        ),
        context_length=context_length,
        device=device,
        dtype=dtype,
        seed=seed,
    )
    doc = evaluate_models(opts, _RichReporter())
    if out is not None:
        from minitron.io import atomic_write_text, versions

        doc_out = dict(doc, versions=versions())
        atomic_write_text(out, to_json(doc_out) + "\n")
    if json_out:
        emit_json(doc)
        return
    from minitron.evaluate.table import render

    console = stdout()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # a file or pipe: no wrapped cells
    render(doc, console)
    if out is not None:
        info(f"wrote {out}")
