"""Zero-shot ranking of search candidates (Minitron-SSM's shortlist), then optional short distillation.

Each shortlisted candidate is pruned in memory from the loaded original and scored on held-back
calibration blocks: its LM loss, and the KL divergence of its next-token distribution from the
original's (teacher logits computed once). Lower is better for both. With `distill_steps`, the best
`top_k` are each distilled briefly (`minitron.distill.trainer.quick_distill`) and re-ranked by the
KL after distillation: the paper's final ranking.
"""

from __future__ import annotations

from minitron.prune.apply import prune_model
from minitron.prune.search import Candidate
from minitron.prune.select import make_plan


def kl_and_loss(logits, teacher_logits, ids) -> tuple[float, float]:
    """Mean forward KL(teacher || student) per token and mean next-token cross-entropy. Shapes [B, T, V]."""
    import torch.nn.functional as F

    s = F.log_softmax(logits.float(), dim=-1)
    kl = None
    if teacher_logits is not None:
        t = F.log_softmax(teacher_logits.float(), dim=-1)
        kl = (t.exp() * (t - s)).sum(-1).mean().item()
    loss = F.nll_loss(s[:, :-1].reshape(-1, s.shape[-1]), ids[:, 1:].reshape(-1)).item()
    return kl, loss


def _forward(model, blocks, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat([model(input_ids=blocks[i:i + batch_size], use_cache=False).logits for i in range(0, len(blocks), batch_size)])


def proxy_scores(model, arch_src, candidates: list[Candidate], scores, eval_blocks, *, batch_size: int = 4,
                 progress=None) -> list[dict]:
    """For each candidate: {"proxy_kl", "proxy_loss"} of the candidate pruned in memory."""
    teacher = _forward(model, eval_blocks, batch_size)
    out = []
    for n, c in enumerate(candidates):
        plan = make_plan(arch_src, c.shape(), scores, c.dropped_layers)
        student = prune_model(model, plan)
        kl, loss = kl_and_loss(_forward(student, eval_blocks, batch_size), teacher, eval_blocks)
        out.append({"proxy_kl": kl, "proxy_loss": loss})
        del student
        if progress is not None:
            progress(n + 1, len(candidates))
    return out


def distill_scores(model, arch_src, candidates: list[Candidate], scores, train_blocks, eval_blocks, *, steps: int,
                   lr: float, device: str = "cpu", progress=None) -> list[dict]:
    """For each candidate: {"distill_kl", "distill_loss"} after `steps` of short distillation."""
    try:
        from minitron.distill.trainer import quick_distill
    except ImportError:
        from minitron.errors import InputError

        raise InputError("short candidate distillation needs minitron.distill.trainer (not available in this build)",
                         flag="--candidate-distill-steps") from None
    out = []
    for n, c in enumerate(candidates):
        plan = make_plan(arch_src, c.shape(), scores, c.dropped_layers)
        student = prune_model(model, plan)
        for p in student.parameters():
            p.requires_grad_(True)
        res = quick_distill(model, student, train_blocks, eval_blocks, steps, lr=lr, device=device)
        out.append({"distill_kl": float(res["kl"]), "distill_loss": float(res["loss"])})
        del student
        if progress is not None:
            progress(n + 1, len(candidates))
    return out

