"""Zero-shot ranking of search candidates (Minitron-SSM's shortlist), then optional short distillation.

Each shortlisted candidate is pruned in memory from the loaded original and scored on held-back
calibration blocks: its LM loss, and the KL divergence of its next-token distribution from the
original's (the same figures and code as `minitron eval`). Lower is better for both. With `distill_steps`, the best
`top_k` are each distilled briefly (`minitron.distill.trainer.quick_distill`) and re-ranked by the
KL after distillation: the paper's final ranking.
"""

from __future__ import annotations

from minitron.progress import report
from minitron.prune.apply import prune_model
from minitron.prune.search import Candidate
from minitron.prune.select import make_plan


def proxy_scores(model, arch_src, candidates: list[Candidate], scores, eval_blocks, *, batch_size: int = 4,
                 progress=None, method=None) -> list[dict]:
    """For each candidate: {"proxy_kl", "proxy_loss"} of the candidate pruned in memory.

    The figures are `minitron eval`'s (`score_blocks`: mean next-token NLL, and the chunked forward
    KL of `minitron.losses.divergence` to the original), batch by batch: no [blocks x tokens x vocab]
    tensor is kept, which matters at a vocabulary of 131072. The original's forward runs again for
    each candidate; that is the price of bounded memory.
    """
    from minitron.evaluate.perplexity import score_blocks

    out = []
    for n, c in enumerate(candidates):
        plan = make_plan(arch_src, c.shape(), scores, c.dropped_layers, **(method or {}))
        student = prune_model(model, plan)
        res = score_blocks(student, eval_blocks, batch_size=batch_size, teacher=model)
        out.append({"proxy_kl": res.mean_kl, "proxy_loss": res.loss})
        del student
        report(progress, "proxy", n + 1, len(candidates))
    return out


def distill_scores(model, arch_src, candidates: list[Candidate], scores, train_blocks, eval_blocks, *, steps: int,
                   lr: float, device: str = "cpu", progress=None, method=None) -> list[dict]:
    """For each candidate: {"distill_kl", "distill_loss"} after `steps` of short distillation."""
    from minitron.distill.trainer import quick_distill

    out = []
    for n, c in enumerate(candidates):
        plan = make_plan(arch_src, c.shape(), scores, c.dropped_layers, **(method or {}))
        student = prune_model(model, plan)
        for p in student.parameters():
            p.requires_grad_(True)
        res = quick_distill(model, student, train_blocks, eval_blocks, steps, lr=lr, device=device)
        out.append({"distill_kl": float(res["kl"]), "distill_loss": float(res["loss"])})
        del student
        report(progress, "distill", n + 1, len(candidates))
    return out

