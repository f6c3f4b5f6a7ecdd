"""`minitron teacher-logits`: run the teacher once and cache its top-k log-probs for `distill --teacher-logits`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minitron.cli.common import (
    JsonOpt,
    OverwriteOpt,
    command,
    emit_json,
    fmt_bytes,
    fmt_int,
    stdout,
)
from minitron.cli.progress import Progress


@command
def command(
    model: Annotated[Path, typer.Argument(help="Teacher model directory.")],
    data: Annotated[list[Path], typer.Option("--data", help="Training text, exactly as `distill --data` will get it (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for the cache.")],
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per block, as distill's --seq-len (default: min(2048, max_position_embeddings)).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Teacher tokens kept per position (plus one tail bin for the rest).")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature of the stored log-probs (must equal distill's).")] = 1.0,
    logprob_dtype: Annotated[str, typer.Option("--logprob-dtype", help="Storage dtype of the log-probs: fp32, fp16 or bf16 (ids are int32).")] = "fp32",
    tokens: Annotated[int | None, typer.Option("--tokens", help="Cache only the first ceil(tokens / seq len) blocks (default: all).")] = None,
    eval_data: Annotated[list[Path] | None, typer.Option("--eval-data", help="Held-out text: also cache an eval split for distill's val KL (repeatable).")] = None,
    eval_samples: Annotated[int | None, typer.Option("--eval-samples", help="At most this many eval blocks.")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Text field of .jsonl/.parquet records.")] = "text",
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", help="Blocks per teacher forward.")] = 4,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest shard file (e.g. 2GB, 512MiB).")] = "2GB",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Compute dtype of the teacher: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")] = "auto",
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", help="Tokens per chunk when making the top-k (default: 16 MiB fp32 temporaries).")] = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
):
    """Run the teacher once over the token blocks distillation will see; store its top-k log-probs.

    Per token: the teacher's --top-k token ids (int32) and the log-probs of those tokens and of one
    tail bin for the rest of the vocabulary, in sharded safetensors with index.json and minitron.json.
    `minitron distill --teacher-logits DIR` then trains without loading the teacher.

    Examples:

      minitron teacher-logits base/ --data train.jsonl --seq-len 4096 --top-k 64 --out base-logits/

      minitron distill --teacher base/ --student pruned/ --data train.jsonl --seq-len 4096 --teacher-logits base-logits/ --steps 1000 --out distilled/
    """
    from minitron.recipes.teacher_logits import TeacherLogitsOptions, run_teacher_logits

    opts = TeacherLogitsOptions(
        model=model, data=list(data), out=out, seq_len=seq_len, top_k=top_k, temperature=temperature,
        logprob_dtype=logprob_dtype, tokens=tokens, eval_data=list(eval_data or []), eval_samples=eval_samples,
        text_field=text_field, micro_batch_size=micro_batch_size, device=device, dtype=dtype,
        max_shard_size=max_shard_size, chunk_size=chunk_size, overwrite=overwrite,
    )  # fmt: skip
    with Progress(unit="blocks") as bar:
        summary = run_teacher_logits(opts, progress=lambda split, done, total: bar.update(
            f"teacher-logits {split}", done, total))
    if json_out:
        emit_json(summary)
        return
    o = stdout()
    blocks = ", ".join(f"{n} {fmt_int(b)} blocks" for n, b in summary["blocks"].items())
    o.print(f"[bold]cached[/bold] {summary['out_dir']}: {fmt_int(summary['tokens'])} tokens ({blocks}), "
            f"top-{summary['k']}{' + tail' if summary['tail'] else ''}, {summary['bytes_per_token']} bytes/token, "
            f"{fmt_bytes(summary['bytes_on_disk'])} on disk, {summary['tokens_per_second']:,.0f} tokens/s")  # fmt: skip
