"""`README.md` in every model directory minitron writes: a Hugging Face model card.

The YAML front matter carries what the hub reads (`base_model`, `base_model_relation: pruned`,
`library_name: transformers`, `pipeline_tag: text-generation`, tags); the body gives the shape
before and after, parameters and memory, how the model was made (the command, or the recipe) and
the measured figures when there are any. `minitron.json` stays the machine-readable record; this is
the page a person reads, and what `hf upload` publishes.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model_id(spec: str | Path, config: dict | None = None) -> str:
    """The hub id of a base model when it is known (the id it was named by, or its config's
    `_name_or_path`), else its directory name (edit the card before publishing)."""
    from minitron.hub import split_revision

    name = split_revision(str(spec))[0]
    if _HUB_ID.match(name) and not Path(name).exists():
        return name
    guess = str((config or {}).get("_name_or_path") or "")
    return guess if _HUB_ID.match(guess) else Path(str(spec)).resolve().name


def _shape_rows(before: dict, after: dict) -> list[str]:
    keys = ("num_layers", "hidden_size", "ffn_size", "mamba_heads", "mamba_head_dim", "attention_heads", "kv_heads")
    rows = ["| | before | after |", "|---|---:|---:|"]
    for k in keys:
        if k in before or k in after:
            rows.append(f"| {k} | {before.get(k, '—')} | {after.get(k, '—')} |")
    return rows


def render(*, title: str, base_model: str, summary: str, before: dict, after: dict, params: tuple[int, int],
           memory: tuple[int, int, str] | None, command: str, figures: dict | None = None,
           tags: tuple[str, ...] = ()) -> str:
    from huggingface_hub import ModelCardData

    from minitron.fmt import fmt_bytes

    data = ModelCardData(base_model=base_model, library_name="transformers", pipeline_tag="text-generation",
                         tags=["minitron", "pruned", *tags])  # fmt: skip
    data.base_model_relation = "pruned"
    lines = ["---", data.to_yaml(), "---", "", f"# {title}", "", summary, "", "## Shape", ""]
    lines += _shape_rows(before, after)
    p0, p1 = params
    lines += ["", f"Parameters: {p0:,} → **{p1:,}** ({p1 / p0:.1%} of the original)."]
    if memory:
        m0, m1, label = memory
        lines.append(f"Memory at {label}: {fmt_bytes(m0)} → **{fmt_bytes(m1)}** (weights + KV cache + Mamba state).")
    if figures:
        lines += ["", "## Measured", "", "| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items()]
    lines += ["", "## How it was made", "", "```", command, "```", "",
              "with minitron (structured pruning and distillation the Minitron way); "
              "`minitron.json` beside this card records every option, input hash and library version.", "",
              "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", 'model = AutoModelForCausalLM.from_pretrained("<this directory or repo id>")',
              'tokenizer = AutoTokenizer.from_pretrained("<this directory or repo id>")', "```", "",
              "Publish: `hf upload <your-org>/<name> <this directory>`.", ""]  # fmt: skip
    return "\n".join(lines)


def command_line() -> str:
    return "minitron " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("minitron", "__main__.py")) \
        else shlex.join(sys.argv)


def write(out_dir: str | Path, text: str) -> Path:
    from minitron.io import atomic_write_text

    path = Path(out_dir) / CARD_FILE
    atomic_write_text(path, text)
    return path


def add_figures(model_dir: str | Path, figures: dict, heading: str = "Evaluation") -> None:
    """Append measured figures (an eval run after the model was written) to its card."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items() if v is not None]
    text = path.read_text().rstrip("\n")
    write(model_dir, text + "\n\n" + "\n".join([f"## {heading}", "", "| figure | value |", "|---|---:|", *rows]) + "\n")


def read_config(model_dir: str | Path) -> dict:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def arch_shape(arch) -> dict:
    """The prunable sizes of an architecture, in the plan's names."""
    return {"num_layers": arch.num_layers, "hidden_size": arch.hidden_size, "ffn_size": arch.intermediate_size,
            "mamba_heads": arch.mamba_num_heads, "mamba_head_dim": arch.mamba_head_dim,
            "attention_heads": arch.num_attention_heads, "kv_heads": arch.num_key_value_heads}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def for_pruned(model_spec, out: Path, ckpt, doc: dict) -> str:
    """The card of a `minitron prune` output (`doc`: prune's JSON document)."""
    from minitron.memory import describe_memory

    base = base_model_id(model_spec, ckpt.config)
    return render(
        title=f"{Path(out).name}: {base} pruned to {_size(doc['params_after'])} parameters", base_model=base,
        summary=f"A structurally pruned `{ckpt.arch.raw.get('model_type')}` model: the units and layers that matter "
                f"least in `{base}` removed (target: {doc['target']['kind']}). Distil it from the original next "
                "(`minitron distill`) to recover most of the loss.",
        before=arch_shape(ckpt.arch), after={k: doc["plan"].get(k) for k in arch_shape(ckpt.arch)},
        params=(doc["params_before"], doc["params_after"]),
        memory=(doc["memory_before"]["total_bytes"], doc["memory"]["total_bytes"], describe_memory(doc["memory"])),
        command=command_line(),
    )  # fmt: skip


def for_distilled(teacher_spec, out: Path, teacher_ckpt, student_ckpt, summary: dict) -> str:
    """The card of a `minitron distill` output (`summary`: distill's JSON document)."""
    from minitron.memory import describe_memory, estimate

    base = base_model_id(teacher_spec, teacher_ckpt.config)
    ctx = student_ckpt.arch.max_position_embeddings
    m0, m1 = estimate(teacher_ckpt.arch, context_length=ctx), estimate(student_ckpt.arch, context_length=ctx)
    fe, ie = summary.get("final_eval") or {}, summary.get("initial_eval") or {}
    where = "held-out data" if summary.get("eval_source") == "eval-data" else "training blocks"
    figures = {f"val KL to the teacher ({where}), before → after": f"{ie.get('kl', float('nan')):.4f} → "
               f"{fe.get('kl', float('nan')):.4f}", f"val LM loss ({where}), before → after":
               f"{ie.get('loss', float('nan')):.4f} → {fe.get('loss', float('nan')):.4f}",
               "training tokens": f"{summary.get('tokens', 0):,}", "steps": summary.get("steps")} if fe else None
    return render(
        title=f"{Path(out).name}: {_size(student_ckpt.arch.total_params)}-parameter student distilled from {base}",
        base_model=base,
        summary=f"A pruned `{student_ckpt.arch.raw.get('model_type')}` model distilled from `{base}` on the "
                f"teacher's logits ({summary.get('loss_kind', 'forward-kl')}).",
        before=arch_shape(teacher_ckpt.arch), after=arch_shape(student_ckpt.arch),
        params=(teacher_ckpt.arch.total_params, student_ckpt.arch.total_params),
        memory=(m0.total_bytes, m1.total_bytes, describe_memory(m1.to_dict())), command=command_line(),
        figures=figures, tags=("distilled",),
    )  # fmt: skip


def for_run(recipe, summary: dict) -> str:
    """`README.md` at the root of a `minitron run` tree: what ran, where the model is, what was measured.

    Its metadata names the run's final model (`distilled/`, else `pruned/`): publish that directory
    (it has its own card); this page is the record of the whole run."""
    from huggingface_hub import ModelCardData

    base = base_model_id(recipe.model)
    data = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation",
                         tags=["minitron", "pruned", *(["distilled"] if "distill" in summary["stages"] else [])])
    data.base_model_relation = "pruned"
    lines = ["---", data.to_yaml(), "---", "", f"# minitron run: {Path(recipe.path).stem}", "",
             f"`{base}` through {' → '.join(summary['stages'])} with the recipe `{recipe.path}` "
             "(copied in `run.json` with each stage's exact command).", "", "| stage | directory | seconds |",
             "|---|---|---:|"]  # fmt: skip
    dirs = {"score": "scores", "prune": "pruned", "distill": "distilled", "eval": "eval"}
    for stage, e in summary["stages"].items():
        dry = stage == "prune" and "--dry-run" in e.get("argv", [])
        lines.append(f"| {stage} | {'(dry run)' if dry else dirs[stage] + '/'} | {e.get('seconds', 0):.0f} |")
    ev = (summary["stages"].get("eval") or {}).get("doc")
    if ev:
        lines += ["", "## Measured (minitron eval)", "", "| model | parameters | loss | perplexity | KL to teacher |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        def num(v, digits):
            return "—" if v is None else f"{v:.{digits}f}"

        for row in ev["models"]:
            lines.append(f"| {Path(row['path']).name} | {row['params']:,} | {num(row.get('loss'), 4)} | "
                         f"{num(row.get('perplexity'), 2)} | {num(row.get('kl'), 4)} |")  # fmt: skip
    if summary.get("model"):
        lines += ["", "## The result", "", f"`{summary['model']}` (a Hugging Face model directory with its own card).",
                  "", f"Publish it: `{summary['publish']}`"]  # fmt: skip
    return "\n".join(lines) + "\n"
