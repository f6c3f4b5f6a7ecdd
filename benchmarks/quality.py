"""Does Minitron beat the obvious alternatives? Measured on the bundled demo teacher (issue #7).

  python benchmarks/quality.py --quick               # ~3-5 minutes: tiny settings, checks the pipeline
  python benchmarks/quality.py                       # the full run (~20-25 minutes on 2 shared cores)
  python benchmarks/quality.py --work /tmp/q --doc docs/benchmarks/quality.md --threads 2

Three tables (markdown on stdout; written to `--doc` with the command and the settings):

1. Width ranking. One target shape (WIDTH_SHAPE: hidden 256->192, FFN 512->256, Mamba heads 16->8,
   attention heads 8->4; layers kept), pruned with `minitron prune` using three `Scores`:
   Minitron's activation scores (`score_model`), weight magnitude and a seeded random ranking
   (`quality_scores.py`). Held-out loss and KL to the teacher right after pruning, and after the
   same distillation (`run_distill`: same steps, lr, schedule, data order, seed).
2. Distillation vs training from scratch. The Minitron-pruned architecture with random weights,
   trained with plain next-token loss (the distillation trainer with the KD term off, `LMTrainer`)
   on the same blocks in the same order with the same lr schedule; evaluated at the distillation's
   token count and then at checkpoints up to a cap, stopping once it matches the distilled loss.
3. Depth. Drop DROP_LAYERS of the 10 layers by each layer metric of `score_model` (kl, mse, loss,
   cosine; `prune` keeps one attention layer); loss/KL right after pruning and after a short
   distillation.

Every training here uses warmup then a *constant* lr (so the from-scratch run's checkpoint at the
distillation's step count is the same schedule, same tokens). Evaluation: the first `eval_samples`
blocks of 256 tokens of the held-out corpus, KL(teacher || model) per token and next-token loss,
fp32 on the CPU (`minitron.distill.trainer.evaluate`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_scores import load_state_dict, magnitude_scores, random_scores, save_scores  # noqa: E402

from minitron.distill.losses import lm_loss  # noqa: E402
from minitron.distill.sampling import rank_micro_batches, step_indices  # noqa: E402
from minitron.distill.trainer import TrainConfig, Trainer, evaluate  # noqa: E402

SEQ_LEN = 256
LR = 2e-3  # the demo's distillation lr (and the teacher's training lr)
SEED = 0
WIDTH_SHAPE = {"hidden_size": 192, "ffn_size": 256, "mamba_heads": 8, "attention_heads": 4}
DROP_LAYERS = 2
METRICS = ("kl", "mse", "loss", "cosine")
NOTES_MARK = "<!-- notes below this line are kept when the benchmark rewrites this file -->"

SETTINGS = {
    # score_samples: calibration blocks; eval_samples: held-out blocks; steps: distillation steps
    # (micro x 256 tokens each); scratch_cap: from-scratch steps at most, evaluated every scratch_every.
    "quick": {"score_samples": 4, "eval_samples": 4, "steps": 3, "micro": 4, "scratch_cap": 9, "scratch_every": 3,
              "depth_steps": 2},
    "full": {"score_samples": 16, "eval_samples": 32, "steps": 24, "micro": 8, "scratch_cap": 120,
             "scratch_every": 12, "depth_steps": 12},
}

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def demo_assets() -> tuple[Path, Path, Path]:
    from minitron.cli.demo_cmd import demo_paths

    return demo_paths()


# ------------------------------------------------------------------------------------------ the pieces
class LMTrainer(Trainer):
    """The distillation trainer with the KD term off: next-token cross-entropy only (single process).

    Same optimiser, schedule, clipping, data order (`step_indices`) and evaluation as `Trainer`;
    the teacher is only used by `evaluate` (KL to the teacher of the from-scratch model).
    """

    def accumulate_gradients(self, step: int) -> torch.Tensor:
        cfg, g, L = self.cfg, self.cfg.global_batch_size, self.seq_len
        indices = step_indices(step, self.train_blocks.shape[0], g, cfg.seed)
        sums = torch.zeros(2, dtype=torch.float64)  # [kd (always 0), ce sum]
        for idx in rank_micro_batches(indices, cfg.micro_batch_size, 0, 1):
            ids = self.train_blocks[idx].to(self.device)  # [micro, L]
            ce = lm_loss(self.student(input_ids=ids, use_cache=False).logits, ids, reduction="sum")
            (ce / (g * (L - 1))).backward()
            sums[1] += float(ce.detach())
        return sums


class Bench:
    def __init__(self, cfg: dict, work: Path):
        from minitron.data import load_blocks
        from minitron.models.checkpoint import load_model, load_tokenizer, open_checkpoint

        self.cfg, self.work = cfg, work
        self.teacher_dir, self.train, self.heldout = demo_assets()
        self.arch = open_checkpoint(self.teacher_dir).arch
        tok = load_tokenizer(self.teacher_dir)
        # The same blocks run_distill reads (all of train.txt, data order) and evaluates on (the first N held-out).
        self.train_blocks = load_blocks([self.train], tok, seq_len=SEQ_LEN)
        self.eval_blocks = load_blocks([self.heldout], tok, seq_len=SEQ_LEN)[: cfg["eval_samples"]]
        self.teacher = load_model(self.teacher_dir, dtype="fp32", device="cpu")
        self.teacher.eval()

    def train_config(self, steps: int, total: int | None = None) -> TrainConfig:
        return TrainConfig(steps=total or steps, micro_batch_size=self.cfg["micro"], lr=LR,
                           warmup_steps=max(1, steps // 10), schedule="constant", seed=SEED)

    def evaluate(self, model) -> dict:
        ev = evaluate(self.teacher, model, self.eval_blocks, micro_batch_size=8, device="cpu")
        return {"loss": ev["loss"], "kl": ev["kl"]}

    def evaluate_dir(self, path: Path) -> dict:
        from minitron.models.checkpoint import load_model

        return self.evaluate(load_model(path, dtype="fp32", device="cpu"))

    def prune(self, scores_dir: Path, dest: Path, *, shape: dict | None = None, num_layers: int | None = None) -> dict:
        from minitron.prune.run import PruneOptions, prune
        from minitron.prune.select import Shape

        doc = prune(PruneOptions(model=self.teacher_dir, out=dest, scores=scores_dir, shape=Shape(**(shape or {})),
                                 num_layers=num_layers, device="cpu"))
        return {"params": doc["params_after"], "plan": doc["plan"]}

    def distill(self, student: Path, dest: Path, steps: int) -> dict:
        """`run_distill` for `steps` steps -> {before: {loss, kl}, after: {loss, kl}, tokens, seconds}."""
        from minitron.distill.run import DistillOptions, run_distill

        t = time.perf_counter()
        s = run_distill(DistillOptions(teacher=self.teacher_dir, student=student, data=[self.train], out=dest,
                                       train=self.train_config(steps), seq_len=SEQ_LEN, eval_data=[self.heldout],
                                       eval_samples=self.cfg["eval_samples"], save_every=0, device="cpu",
                                       dtype="fp32"))
        pick = lambda ev: {"loss": ev["loss"], "kl": ev["kl"]}  # noqa: E731
        return {"before": pick(s["initial_eval"]), "after": pick(s["final_eval"]), "tokens": s["tokens"],
                "seconds": round(time.perf_counter() - t, 1)}


# ------------------------------------------------------------------------------------------ the three studies
def study_width(b: Bench, minitron_scores) -> list[dict]:
    from minitron.models.checkpoint import open_checkpoint

    sets = {
        "minitron (activations)": dict(minitron_scores.tensors),
        "weight magnitude": magnitude_scores(load_state_dict(b.teacher_dir), open_checkpoint(b.teacher_dir).arch),
        "random (seed 0)": random_scores(b.arch, seed=SEED),
    }
    rows = []
    for i, (name, tensors) in enumerate(sets.items()):
        d = b.work / f"width{i}"
        save_scores(tensors, d / "scores", model_dir=b.teacher_dir)
        log(f"width: {name}: prune to {WIDTH_SHAPE}")
        pr = b.prune(d / "scores", d / "pruned", shape=WIDTH_SHAPE)
        log(f"width: {name}: distill {b.cfg['steps']} steps")
        ds = b.distill(d / "pruned", d / "distilled", b.cfg["steps"])
        rows.append({"ranking": name, "params": pr["params"], "pruned": ds["before"], "distilled": ds["after"],
                     "tokens": ds["tokens"], "path": str(d / "pruned"), "distill_seconds": ds["seconds"]})
        log(f"width: {name}: loss {ds['before']['loss']:.3f} -> {ds['after']['loss']:.3f}")
    return rows


def study_scratch(b: Bench, minitron_row: dict) -> dict:
    """From-scratch LM training of the Minitron-pruned architecture until it matches the distilled loss."""
    from transformers import AutoConfig, AutoModelForCausalLM

    steps, cap, every = b.cfg["steps"], b.cfg["scratch_cap"], b.cfg["scratch_every"]
    target = minitron_row["distilled"]["loss"]
    torch.manual_seed(SEED)
    config = AutoConfig.from_pretrained(minitron_row["path"])
    config.use_cache = False
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tr = LMTrainer(b.teacher, student, b.train_blocks, b.eval_blocks, b.train_config(steps, total=cap), device="cpu")
    tokens_per_step = tr.cfg.global_batch_size * SEQ_LEN
    curve = [{"step": 0, "tokens": 0, **b.evaluate(student)}]
    checkpoints = sorted({steps, *range(every, cap + 1, every), cap})
    reached = None
    t = time.perf_counter()
    while tr.step < cap:
        tr.train_step()
        if tr.step in checkpoints:
            curve.append({"step": tr.step, "tokens": tr.step * tokens_per_step, **b.evaluate(student)})
            log(f"scratch: step {tr.step}/{cap}: loss {curve[-1]['loss']:.3f} (distilled {target:.3f})")
            if curve[-1]["loss"] <= target and tr.step >= steps:
                reached = curve[-1]
                break
    same = next(c for c in curve if c["step"] == steps)
    return {"target_loss": target, "distill_tokens": minitron_row["tokens"], "same_tokens": same, "curve": curve,
            "reached": reached, "cap_tokens": cap * tokens_per_step, "seconds": round(time.perf_counter() - t, 1)}


def study_depth(b: Bench, minitron_scores) -> list[dict]:
    t = minitron_scores.tensors
    keep = b.arch.num_layers - DROP_LAYERS
    done: dict[tuple, dict] = {}
    rows = []
    for i, metric in enumerate(METRICS):
        layer = t["layers"] if metric == minitron_scores.metric else t.get(f"layers_{metric}")
        if layer is None:
            rows.append({"metric": metric, "missing": True})
            continue
        d = b.work / f"depth{i}"
        save_scores({**t, "layers": layer}, d / "scores", model_dir=b.teacher_dir, metric=metric)
        pr = b.prune(d / "scores", d / "pruned", num_layers=keep)
        dropped = tuple(pr["plan"]["dropped_layers"])
        if dropped in done:  # the same layers as another metric: the same model, measured once
            rows.append({**done[dropped], "metric": metric, "same_as": done[dropped]["metric"]})
            continue
        log(f"depth: {metric}: drop layers {list(dropped)} ({pr['plan']['pattern']})")
        row = {"metric": metric, "dropped": list(dropped), "pattern": pr["plan"]["pattern"], "params": pr["params"],
               "layer_scores": [round(float(x), 5) for x in layer]}
        if b.cfg["depth_steps"]:
            ds = b.distill(d / "pruned", d / "distilled", b.cfg["depth_steps"])
            row.update(pruned=ds["before"], distilled=ds["after"], tokens=ds["tokens"])
        else:
            row.update(pruned=b.evaluate_dir(d / "pruned"), distilled=None)
        done[dropped] = row
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ tables
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
                   f"{s['cap_tokens']:,} tokens ({s['cap_tokens'] / dt:.0f}x the distillation's {dt:,}); its best "
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
        best = min(ok, key=lambda r: r["pruned"]["kl"])
        out += ["", f"- Lowest KL right after pruning: {best['metric']} (drops {best['dropped']})."]
    return "\n".join(out)


def render_doc(res: dict, command: str, notes: str) -> str:
    c, st = res["settings"], res["settings"]["steps"]
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
        f"{WIDTH_SHAPE['attention_heads']} (2 KV heads kept), all 10 layers kept. Magnitude = L2 norms of the "
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
        f"{c['scratch_cap']} steps, stopping at the first checkpoint that matches the distilled model's loss.",
        "",
        table_scratch(res["scratch"], res["teacher"]),
        "",
        f"## 3. Depth: drop {DROP_LAYERS} of {res['teacher']['layers']} layers by each layer metric",
        "",
        "Layer scores from the same `score_model` run (the full pass once, then each layer skipped); `prune "
        f"--num-layers {res['teacher']['layers'] - DROP_LAYERS}` drops the lowest-scored layers (keeping one "
        f"attention layer). Distillation: {c['depth_steps']} steps, otherwise as above.",
        "",
        table_depth(res["depth"], res["teacher"], c["depth_steps"]),
        "",
        NOTES_MARK,
        notes.rstrip() if notes.strip() else "",
        "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings (a pipeline check, not a measurement)")
    ap.add_argument("--work", type=Path, default=None, help="keep the scores and models here (default: a temp dir)")
    ap.add_argument("--doc", type=Path, default=None,
                    help="markdown report (default: docs/benchmarks/quality.md in full mode, none with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    cfg = SETTINGS[mode]
    doc_path = args.doc or (None if args.quick else Path(__file__).resolve().parents[1] / "docs/benchmarks/quality.md")
    torch.set_num_threads(args.threads)
    load_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-quality-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log(f"{mode} run in {work}: {cfg}")

    from minitron.importance.run import ScoreOptions, score_model

    b = Bench(cfg, work)
    a = b.arch
    teacher = {"params": a.total_params, "pattern": a.pattern, "layers": a.num_layers, "hidden": a.hidden_size,
               "ffn": a.intermediate_size, "mamba_heads": a.mamba_num_heads, "q_heads": a.num_attention_heads,
               **b.evaluate(b.teacher)}
    log(f"teacher: loss {teacher['loss']:.3f} on {cfg['eval_samples']} held-out blocks; scoring")
    scores = score_model(b.teacher_dir, [str(b.train)], ScoreOptions(
        samples=cfg["score_samples"], seq_len=SEQ_LEN, batch_size=8, layer_metric="kl", device="cpu",
        dtype="fp32", streaming=False)).scores
    res = {"mode": mode, "settings": cfg, "teacher": teacher, "threads": args.threads, "load_start": load_start}
    res["width"] = study_width(b, scores)
    res["scratch"] = study_scratch(b, res["width"][0])
    res["scratch"]["distilled_kl"] = res["width"][0]["distilled"]["kl"]
    res["depth"] = study_depth(b, scores)
    res["seconds"] = time.perf_counter() - T0
    res["load_end"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    res["machine"] = f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}"
    (work / "quality.json").write_text(json.dumps(res, indent=2, default=str) + "\n")

    print("## 1. Width ranking\n\n" + table_width(res["width"], teacher, cfg["steps"]) + "\n")
    print("## 2. Distillation vs from scratch\n\n" + table_scratch(res["scratch"], teacher) + "\n")
    print("## 3. Depth by layer metric\n\n" + table_depth(res["depth"], teacher, cfg["depth_steps"]))
    if doc_path is not None:
        notes = ""
        if doc_path.is_file() and NOTES_MARK in doc_path.read_text():
            notes = doc_path.read_text().split(NOTES_MARK, 1)[1]
        command = "python benchmarks/quality.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        doc_path.write_text(render_doc(res, command, notes))
        log(f"wrote {doc_path}")
    log(f"done in {res['seconds'] / 60:.1f} min; results {work / 'quality.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
