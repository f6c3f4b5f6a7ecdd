"""`distill --dry-run`: the memory plan of a run from its options and the two configs, and its fit.

The plan is made for one device and for N devices with FSDP2 (N = `--nproc`, else the processes of
this run, else 8), and for the configuration asked (`--nproc` / torchrun processes, `--fsdp`,
`--teacher-logits`, `--gradient-checkpointing`, `--micro-batch-size`). With `--gpu` or
`--memory-budget` it says whether the asked configuration fits one device's budget and, if not,
the cheapest change that does (`memory_plan.cheapest_fit`).
"""

from __future__ import annotations

from minitron import distributed as dist
from minitron.data import resolve_seq_len
from minitron.distill.memory_plan import PlanInput, cheapest_fit, plan
from minitron.errors import InfeasibleError, InputError, MinitronError


def plan_document(opts, teacher_arch, student_arch, *, device: str | None = None) -> dict:
    from minitron.device import auto_dtype
    from minitron.losses.divergence import auto_chunk
    from minitron.memory import make_budget

    if opts.nproc is not None and opts.nproc < 1:
        raise InputError(f"must be >= 1, got {opts.nproc}", flag="--nproc")
    budget = make_budget(gpu=opts.gpu, memory_budget=opts.memory_budget, headroom=0.0, reserve_gib=0.0)  # training: the whole GPU
    kind = "cuda" if (opts.gpu or str(device or opts.device).startswith("cuda")) else "cpu"
    dtype = auto_dtype(opts.dtype, kind)
    devices = opts.nproc or dist.world_size()
    base = PlanInput(
        teacher=teacher_arch, student=student_arch,
        seq_len=resolve_seq_len(opts.seq_len, min(teacher_arch.max_position_embeddings,
                                                  student_arch.max_position_embeddings)),
        micro_batch_size=opts.train.micro_batch_size,
        devices=1, fsdp=False, cached_teacher=opts.teacher_logits is not None,
        gradient_checkpointing=opts.gradient_checkpointing, compute_dtype=dtype, device=kind,
        chunk_tokens=auto_chunk(student_arch.vocab_size, opts.train.chunk_size),
        top_k=opts.train.top_k or 64, intermediate=opts.train.intermediate_weight > 0,
    )  # fmt: skip
    from dataclasses import replace


    many = devices if devices > 1 else 8
    asked = replace(base, devices=devices, fsdp=bool(opts.fsdp))
    doc = {
        "plans": {"1": plan(base), str(many): plan(replace(base, devices=many, fsdp=True))},
        "asked": plan(asked), "budget": budget.to_dict() if budget else None, "fits": None, "suggestion": None,
    }  # fmt: skip
    if budget is not None:
        doc["fits"] = doc["asked"]["total"] <= budget.budget_bytes
        if not doc["fits"]:
            found = cheapest_fit(asked, budget.budget_bytes)
            doc["suggestion"] = found[0] if found else None
            doc["suggested_plan"] = found[1] if found else None
            if found is None and asked.intermediate:  # what fits once the intermediate-state loss is off
                other = cheapest_fit(replace(asked, intermediate=False), budget.budget_bytes)
                doc["suggestion_without_intermediate"] = other[0] if other else None
    return doc


def infeasible_message(doc: dict) -> str:
    gib = 1024**3
    need, have = doc["asked"]["total"] / gib, doc["budget"]["budget_bytes"] / gib
    where = f"{doc['asked']['devices']} device(s)" + (" with FSDP2" if doc["asked"]["fsdp"] else "")
    if doc["suggestion"]:
        fix = f"; cheapest change that fits: {doc['suggestion']} ({doc['suggested_plan']['total'] / gib:.1f} GiB)"
    elif doc["asked"].get("intermediate"):
        fix = "; nothing up to 1024 devices fits with --intermediate-weight, which needs the teacher model (no --teacher-logits)"
        other = doc.get("suggestion_without_intermediate")
        fix += f"; without it: {other}" if other else "; nothing fits without it either"
    else:
        fix = "; nothing up to 1024 devices fits"
    return f"the plan needs {need:.1f} GiB per device on {where}, the budget is {have:.1f} GiB{fix}"


def check_plan(doc: dict) -> None:
    """Raise (exit 3) when the asked configuration does not fit the budget."""
    if doc["fits"] is False:
        raise InfeasibleError(infeasible_message(doc), flag="--memory-budget" if doc["budget"]["gpu"] is None else "--gpu")


def memory_plan(opts, t_ckpt=None, s_ckpt=None, device: str | None = None) -> dict:
    """The `--dry-run` document: the plan per device for 1 and N devices and the fit (no model loaded)."""
    if t_ckpt is None:  # --dry-run: configs suffice (weights need not exist; bundled config names work)
        t_ckpt, s_ckpt = _open_config(opts.teacher, "--teacher"), _open_config(opts.student, "--student")
    return plan_document(opts, t_ckpt.arch, s_ckpt.arch, device=device)


def _open_config(path, flag: str):
    from pathlib import Path

    from minitron.hub import resolve_model_path
    from minitron.models.checkpoint import open_checkpoint

    path = resolve_model_path(path)
    if not (Path(path) / "config.json").is_file():
        raise InputError(f"{path} is not a Hugging Face causal-LM directory (no config.json)", flag=flag)
    try:
        return open_checkpoint(path, require_weights=False, check=False)
    except MinitronError as e:
        raise InputError(str(e), flag=flag) from None
