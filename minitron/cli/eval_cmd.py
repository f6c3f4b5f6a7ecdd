"""`minitron eval`: teacher, pruned and distilled models side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import (
    ContextOpt,
    EngineOpt,
    JsonOpt,
    KvDtypeOpt,
    MemoryDtypeOpt,
    OverwriteOpt,
    PrefillChunkOpt,
    RevisionOpt,
    SeqLenOpt,
    SequencesOpt,
    StateDtypeOpt,
    TensorParallelOpt,
    command,
    emit_json,
    info,
    stdout,
    with_revision,
)
from minitron.cli.progress import Progress


def _print_task_dir(value: bool):
    if value:
        from minitron.evaluate.local_task import TASKS_DIR

        print(TASKS_DIR)
        raise typer.Exit()


@command
def command(
    models: Annotated[list[Path], typer.Argument(help="Model directories; the first is the reference row.")],
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Held-out text (.txt, .jsonl, .parquet) for loss and perplexity."),
    ] = None,
    seq_len: SeqLenOpt = None,
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
    context_length: ContextOpt = None,
    sequences: SequencesOpt = 1,
    memory_dtype: MemoryDtypeOpt = "bf16",
    state_dtype: StateDtypeOpt = None,
    engine: EngineOpt = "vllm",
    kv_dtype: KvDtypeOpt = None,
    prefill_chunk: PrefillChunkOpt = None,
    tensor_parallel: TensorParallelOpt = 1,
    gpu: Annotated[str | None, typer.Option("--gpu", help="Deployment fit: concurrent sequences on this GPU.")] = None,
    memory_budget: Annotated[
        str | None, typer.Option("--memory-budget", help="Deployment fit against a size instead, e.g. 19.66GiB.")
    ] = None,
    vllm: Annotated[bool, typer.Option(
        "--vllm", help="Also run each model in vLLM: greedy tokens vs transformers, generation throughput, cache bytes.")] = False,
    vllm_python: Annotated[str | None, typer.Option(
        "--vllm-python", help="Python of the vLLM environment (default: $MINITRON_VLLM_PYTHON).")] = None,
    vllm_tokens: Annotated[int, typer.Option("--vllm-tokens", help="Greedy tokens compared per prompt (--vllm).")] = 24,
    vllm_eager: Annotated[bool, typer.Option(
        "--vllm-eager", help="vLLM without torch.compile (faster load, slower decode).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")
    ] = "auto",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of lm-eval's few-shot sampling and the throughput prompt.")
    ] = 0,
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
    from minitron.recipes.eval import EvalOptions, evaluate_models
    from minitron.evaluate.throughput import ThroughputSettings
    from minitron.evaluate.vllm_check import VllmSettings
    from minitron.memory import make_budget

    if out is not None:
        from minitron.io import check_output_dir

        check_output_dir(out, overwrite=overwrite, inputs=list(models) + [teacher])
    opts = EvalOptions(
        models=[with_revision(m, revision) for m in models],
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
        sequences=sequences,
        memory_dtype=memory_dtype,
        state_dtype=state_dtype,
        engine=engine,
        kv_dtype=kv_dtype,
        prefill_chunk=prefill_chunk,
        tensor_parallel=tensor_parallel,
        budget=make_budget(gpu=gpu, memory_budget=memory_budget, engine=engine),
        vllm=VllmSettings(python=vllm_python, greedy_tokens=vllm_tokens, enforce_eager=vllm_eager,
                          kv_cache_dtype={"fp8": "fp8", None: "auto"}.get(kv_dtype, "auto")) if vllm else None,
        device=device,
        dtype=dtype,
        seed=seed,
    )
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
