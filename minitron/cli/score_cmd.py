"""`minitron score`: Minitron activation importance of every width axis, and layer importance."""

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
from minitron.recipes.score import ScoreOptions

STABLE = 0.9  # split-half Spearman below which a ranking is flagged (docs/score.md)


@command
@with_options(ScoreOptions)
def command(
    options,
    model: Annotated[Path, typer.Argument(help="Hugging Face Nemotron-H model directory.")],
    data: Annotated[list[Path], typer.Option("--data", help="Calibration text: .txt, .jsonl or .parquet (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for scores.safetensors, minitron.json, importance.png.")],
    overwrite: OverwriteOpt = False,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
):
    """Score the importance of every prunable unit and every layer on calibration data.

    Width: hidden channels, FFN neurons, attention and KV heads, Mamba heads and head-dim channels
    (Minitron activation importance; mean over the sequence, L2 over the batch by default); in MoE
    layers the routed experts (--expert-metric), each expert's neurons and the shared expert's.
    Layers: the change of the output when the block is skipped (--layer-metric), plus 1 - cos(in, out).
    Models larger than free memory are streamed block by block from their safetensors files.
    Under torchrun the samples are split across the processes.

    The defaults (1024 blocks of up to 2048 tokens) are the paper's calibration set: minutes on a GPU,
    long on a CPU. For a first look on a CPU use --samples 64 --seq-len 512.

    Examples:

      minitron score MODEL --data train.txt --samples 64 --seq-len 512 --out scores/

      minitron score MODEL --data train.txt --out scores/ --device cuda

      minitron score MODEL --data a.jsonl --data b.parquet --samples 256 --seq-len 2048 --out scores/ --json

      minitron score MODEL --data train.txt --layer-metric cosine --streaming --device cuda --out scores/

      minitron score MODEL --data train.txt --width-metric ffn=act_down --width-metric mamba_heads=gated_out --out scores/

      minitron score MODEL --data train.txt --compensation on --out scores/

      torchrun --nproc-per-node 8 -m minitron score MODEL --data train.txt --out scores/
    """
    from minitron import distributed
    from minitron.io import check_output_dir
    from minitron.recipes.score import prepare, run, write_outputs

    opts = options()
    device = opts.device
    check_output_dir(out, overwrite=overwrite, inputs=[model])
    with distributed.session("cuda" if device.startswith("cuda") else "cpu"):
        p = prepare(with_revision(model, revision), [str(d) for d in data], opts)
        main = distributed.is_main()
        path = "layer-streamed" if p.streaming else "in memory"
        if main:
            info(f"scoring {p.tokens.shape[0]} x {p.opts.seq_len} tokens on {p.device} ({p.dtype_name}, {path}, "
                 f"{distributed.world_size()} process(es))")
        with Progress(unit="layer passes", disable=not main) as bar:
            result = run(p, progress=bar.update)
        if main:
            doc = write_outputs(out, p, result, overwrite=overwrite)
            emit_json(doc) if json_out else render(doc)


def render(doc: dict) -> None:
    from rich.table import Table

    out = stdout()
    out.print(f"[bold]scores written to {doc['out']}[/bold]  ({doc['samples']} samples x {doc['seq_len']} tokens, "
              f"{'layer-streamed' if doc['streaming'] else 'in memory'}, {doc['seconds']:.1f} s)")
    t = Table(title=f"least important layers ({doc['metric']} when skipped)", title_justify="left")
    for col in ("layer", "type", "score"):
        t.add_column(col, justify="right" if col != "type" else "left")
    for row in doc["least_important_layers"]:
        t.add_row(str(row["layer"]), row["type"], f"{row['score']:.4g}")
    out.print(t)
    if doc.get("stability"):
        st = doc["stability"]
        low = [a for a, r in st.items() if r < STABLE]
        out.print("ranking stability (Spearman, even vs odd batches): "
                  + ", ".join(f"{a} {r:.3f}" for a, r in st.items())
                  + (f"  [yellow]{', '.join(low)} below {STABLE}: more --samples would change the ranking[/yellow]"
                     if low else ""))
    if doc.get("compensation"):
        out.print(f"compensation statistics: {doc['compensation']}")
    t = Table(title="concentration of importance (per layer, averaged)", title_justify="left")
    for col in ("axis", "units", "layers", "top 10% share", "gini"):
        t.add_column(col, justify="left" if col == "axis" else "right")
    for axis, c in doc["concentration"].items():
        t.add_row(axis, str(c["units"]), str(c["rows"]), f"{100 * c['top10_share']:.1f}%", f"{c['gini']:.3f}")
    out.print(t)
