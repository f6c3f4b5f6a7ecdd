"""`minitron teacher-logits`: run the teacher once and cache its top-k log-probs for `distill --teacher-logits`."""

from __future__ import annotations

from minitron.cli.common import (
    JsonOpt,
    command,
    emit_json,
    fmt_bytes,
    fmt_int,
    stdout,
)
from minitron.cli.options import with_options
from minitron.cli.progress import Progress
from minitron.recipes.teacher_logits import TeacherLogitsOptions


@command
@with_options(TeacherLogitsOptions)
def command(options, json_out: JsonOpt = False):
    """Run the teacher once over the token blocks distillation will see; store its top-k log-probs.

    Per token: the teacher's --top-k token ids (int32) and the log-probs of those tokens and of one
    tail bin for the rest of the vocabulary, in sharded safetensors with index.json and minitron.json.
    `minitron distill --teacher-logits DIR` then trains without loading the teacher.

    Examples:

      minitron teacher-logits base/ --data train.jsonl --seq-len 4096 --top-k 64 --out base-logits/

      minitron distill --teacher base/ --student pruned/ --data train.jsonl --seq-len 4096 --teacher-logits base-logits/ --steps 1000 --out distilled/
    """
    from minitron.recipes.teacher_logits import run_teacher_logits

    opts = options()
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
