"""Markdown rendering of `benchmarks/quality.py`'s results (the three tables and the report)."""

from __future__ import annotations

NOTES_MARK = "<!-- notes below this line are kept when the benchmark rewrites this file -->"

def _f(x, nd=3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def table_width(rows: list[dict], teacher: dict, steps: int) -> str:
    out = [f"| ranking | params | loss after prune | KL after prune | loss after {steps}-step distill | "
           "KL after distill |", "|---|---|---|---|---|---|",
           f"| (teacher, unpruned) | {teacher['params'] / 1e6:.2f} M | {_f(teacher['loss'])} | 0 | — | — |"]
    for r in rows:
        out.append(f"| {r['ranking']} | {r['params'] / 1e6:.2f} M | {_f(r['pruned']['loss'])} | {_f(r['pruned']['kl'])} "
                   f"| {_f(r['distilled']['loss'])} | {_f(r['distilled']['kl'])} |")
    out.append("")
    m = rows[0]
    for other in rows[1:]:
        for stage, what in (("pruned", "right after pruning"), ("distilled", "after distillation")):
            a, o = m[stage]["loss"], other[stage]["loss"]
            verdict = "beats" if a < o else "does NOT beat"
            out.append(f"- {what}: Minitron's ranking {verdict} {other['ranking']} (loss {a:.3f} vs {o:.3f}).")
    return "\n".join(out)


def table_scratch(s: dict, teacher: dict) -> str:
    dt = s["distill_tokens"]
    out = ["| model | training | tokens | held-out loss | KL to teacher |", "|---|---|---|---|---|",
           f"| teacher | (its own training) | — | {_f(teacher['loss'])} | 0 |",
           f"| Minitron pruned + distilled | KD from the teacher | {dt:,} | {_f(s['target_loss'])} | "
           f"{_f(s['distilled_kl'])} |"]
    for c in s["curve"]:
        tag = " (same tokens)" if c["tokens"] == dt else ""
        out.append(f"| same architecture, random init | LM loss{tag} | {c['tokens']:,} | {_f(c['loss'])} | "
                   f"{_f(c['kl'])} |")
    out.append("")
    if s["reached"] is not None:
        r = s["reached"]
        prev = max((c["tokens"] for c in s["curve"] if c["tokens"] < r["tokens"]), default=0)
        out.append(f"- From scratch matches the distilled loss ({s['target_loss']:.3f}) by {r['tokens']:,} tokens "
                   f"(first checkpoint at or below it; between {prev:,} and {r['tokens']:,}): "
                   f"{r['tokens'] / dt:.1f}x the distillation's {dt:,} tokens (upper bound).")
    else:
        best = min(c["loss"] for c in s["curve"])
        out.append(f"- From scratch did NOT reach the distilled loss ({s['target_loss']:.3f}) within "
                   f"{s['cap_tokens']:,} tokens ({s['cap_tokens'] / dt:.0f}x the distillation's {dt:,}"
                   f"{'; stopped by the wall-time limit' if s.get('stopped_by_time') else ''}); its best "
                   f"held-out loss was {best:.3f}. So distillation needed more than {s['cap_tokens'] / dt:.0f}x "
                   f"fewer tokens here.")
    return "\n".join(out)


def table_depth(rows: list[dict], teacher: dict, steps: int) -> str:
    out = [f"| layer metric | dropped layers | pattern | loss after prune | KL after prune | "
           f"loss after {steps}-step distill | KL after distill |", "|---|---|---|---|---|---|---|",
           f"| (teacher) | — | {teacher['pattern']} | {_f(teacher['loss'])} | 0 | — | — |"]
    for r in rows:
        if r.get("missing"):
            out.append(f"| {r['metric']} | (not produced by score_model) | | | | | |")
            continue
        same = f" (same as {r['same_as']})" if r.get("same_as") else ""
        dist = r.get("distilled") or {}
        out.append(f"| {r['metric']} | {r['dropped']}{same} | {r['pattern']} | {_f(r['pruned']['loss'])} | "
                   f"{_f(r['pruned']['kl'])} | {_f(dist.get('loss'))} | {_f(dist.get('kl'))} |")
    ok = [r for r in rows if not r.get("missing")]
    if ok:
        out.append("")
        for key, what in (("kl", "KL"), ("loss", "loss")):
            best = min(ok, key=lambda r: r["pruned"][key])
            out.append(f"- Lowest {what} right after pruning: {best['metric']} (drops {best['dropped']}).")
        dist = [r for r in ok if r.get("distilled")]
        if dist:
            best = min(dist, key=lambda r: r["distilled"]["loss"])
            out.append(f"- Lowest loss after distillation: {best['metric']} (drops {best['dropped']}).")
        worse = sorted({r["metric"] for r in dist if r["distilled"]["loss"] > r["pruned"]["loss"]})
        if worse:
            out.append(f"- The short distillation made the held-out loss WORSE for: {', '.join(worse)}.")
    return "\n".join(out)


def render_doc(res: dict, command: str, notes: str) -> str:
    c, st = res["settings"], res["settings"]["steps"]
    k = res["constants"]
    LR, SEED, SEQ_LEN, WIDTH_SHAPE, DROP_LAYERS = (k[x] for x in ("lr", "seed", "seq_len", "width_shape", "drop_layers"))  # noqa: N806
    parts = [
        "# Quality benchmark: Minitron's scores and distillation vs the alternatives",
        "",
        "Measured on the bundled demo teacher (`minitron/assets/demo/teacher`, 4.56 M parameters, "
        f"pattern `{res['teacher']['pattern']}`) and its corpus (calibration and training: `train.txt`; "
        "evaluation: `heldout.txt`). Command:",
        "",
        f"    {command}",
        "",
        f"Mode `{res['mode']}`; {res['seconds'] / 60:.1f} min wall on {res['machine']}; "
        f"torch threads {res['threads']}; load average at start {res['load_start']}, at end {res['load_end']}.",
        "",
        f"Settings: scores from {c['score_samples']} x {SEQ_LEN} calibration tokens (`score_model`, fp32); "
        f"evaluation on the first {c['eval_samples']} held-out blocks of {SEQ_LEN} tokens (loss = next-token "
        "cross-entropy in nats, KL = KL(teacher || model) per token); every training run: AdamW, "
        f"lr {LR}, warmup {max(1, st // 10)} step(s) then constant, batch {c['micro']} x {SEQ_LEN} tokens, "
        f"clip 1.0, seed {SEED}, the same data order. Distillation = `run_distill` (forward KL on logits).",
        "",
        "## 1. Width: Minitron scores vs weight magnitude vs random ranking",
        "",
        f"Target shape (all three): hidden {res['teacher']['hidden']} -> {WIDTH_SHAPE['hidden_size']}, "
        f"FFN {res['teacher']['ffn']} -> {WIDTH_SHAPE['ffn_size']}, Mamba heads {res['teacher']['mamba_heads']} -> "
        f"{WIDTH_SHAPE['mamba_heads']} (4 groups), attention heads {res['teacher']['q_heads']} -> "
        f"{WIDTH_SHAPE['attention_heads']} (2 KV heads kept), all {res['teacher']['layers']} layers kept. Magnitude = L2 norms of the "
        "teacher's weights per unit: hidden channel = embedding column; FFN neuron = ||up_proj row|| x "
        "||down_proj column||; attention head = its q_proj rows (KV head: its k and v rows); Mamba head = its x "
        "rows of in_proj; Mamba head-dim channel = those rows over all heads (`benchmarks/quality_scores.py`). "
        "Random = uniform scores, seed 0. All three go through `minitron prune --scores`.",
        "",
        table_width(res["width"], res["teacher"], st),
        "",
        "## 2. Distillation vs the same architecture trained from random initialisation",
        "",
        "The Minitron-pruned architecture of table 1, re-initialised at random (transformers' init, seed 0) "
        "and trained with plain next-token loss (the distillation trainer with the KD term off) on the same "
        f"blocks in the same order, same lr and schedule; evaluated every {c['scratch_every']} steps, at most "
        f"{c['scratch_cap']} steps or {c['scratch_seconds']} s of training, stopping at the first checkpoint that "
        "matches the distilled model's loss.",
        "",
        table_scratch(res["scratch"], res["teacher"]),
        "",
        f"## 3. Depth: drop {DROP_LAYERS} of {res['teacher']['layers']} layers by each layer metric",
        "",
        "Layer scores from the same `score_model` run (the full pass once, then each layer skipped); `prune "
        f"--num-layers {res['teacher']['layers'] - DROP_LAYERS}` drops the lowest-scored layers (keeping one "
        f"attention layer). Distillation: {c['depth_steps']} steps at lr {k['depth_lr']} (a model this close to the "
        "teacher is pushed away by the width study's lr), otherwise as above.",
        "",
        table_depth(res["depth"], res["teacher"], c["depth_steps"]),
        "",
        NOTES_MARK,
        "",
        notes.strip(),
        "",
    ]
    return "\n".join(parts)
