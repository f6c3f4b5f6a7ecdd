"""Does Minitron beat the obvious alternatives? Measured on the bundled demo teacher (issue #7).

  python benchmarks/quality.py --quick               # 0.6-3 minutes: tiny settings, checks the pipeline
  python benchmarks/quality.py                       # the full run (9 minutes on 2 shared cores; more under load)
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
   distillation at DEPTH_LR (lower: these models start close to the teacher).

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
from quality_tables import NOTES_MARK, render_doc, table_depth, table_scratch, table_width  # noqa: E402

from minitron.distill.sampling import rank_micro_batches, step_indices  # noqa: E402
from minitron.distill.trainer import TrainConfig, Trainer, evaluate  # noqa: E402
from minitron.losses.divergence import lm_loss  # noqa: E402

SEQ_LEN = 256
LR = 2e-3  # the demo's distillation lr (and the teacher's training lr): width study and from scratch
DEPTH_LR = 5e-4  # depth study: at 2e-3, 12 steps raised the KL of a 2-layer-drop model from 0.020 to 0.122
SEED = 0
WIDTH_SHAPE = {"hidden_size": 192, "ffn_size": 256, "mamba_heads": 8, "attention_heads": 4}
DROP_LAYERS = 2
METRICS = ("kl", "mse", "loss", "cosine")

SETTINGS = {
    # score_samples: calibration blocks; eval_samples: held-out blocks; steps: distillation steps
    # (micro x 256 tokens each); scratch_cap: from-scratch steps at most, evaluated every scratch_every,
    # and no new step after scratch_seconds of wall time (the run then reports the tokens it got to).
    "quick": {"score_samples": 4, "eval_samples": 4, "steps": 3, "micro": 4, "scratch_cap": 9, "scratch_every": 3,
              "scratch_seconds": 600, "depth_steps": 2},
    "full": {"score_samples": 16, "eval_samples": 32, "steps": 24, "micro": 8, "scratch_cap": 480,
             "scratch_every": 24, "scratch_seconds": 660, "depth_steps": 10},
}

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def fresh_work_dir(work: Path) -> None:
    """Empty `work` for a new run; a non-empty directory is only cleared if an earlier run made it."""
    if work.exists() and any(work.iterdir()):
        if not (work / ".minitron-quality").exists():
            raise SystemExit(f"{work} is not empty and was not made by this benchmark; give another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / ".minitron-quality").touch()


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

    def train_config(self, steps: int, total: int | None = None, lr: float = LR, seed: int = SEED) -> TrainConfig:
        return TrainConfig(steps=total or steps, micro_batch_size=self.cfg["micro"], lr=lr,
                           warmup_steps=max(1, steps // 10), schedule="constant", seed=seed)

    def evaluate(self, model) -> dict:
        ev = evaluate(self.teacher, model, self.eval_blocks, micro_batch_size=8, device="cpu")
        return {"loss": ev["loss"], "kl": ev["kl"]}

    def evaluate_dir(self, path: Path) -> dict:
        from minitron.models.checkpoint import load_model

        return self.evaluate(load_model(path, dtype="fp32", device="cpu"))

    def prune(self, scores_dir: Path, dest: Path, *, shape: dict | None = None, num_layers: int | None = None) -> dict:
        from minitron.prune.select import Shape
        from minitron.recipes.prune import PruneOptions, prune

        doc = prune(PruneOptions(model=self.teacher_dir, out=dest, scores=scores_dir, shape=Shape(**(shape or {})),
                                 num_layers=num_layers, device="cpu"))
        return {"params": doc["params_after"], "plan": doc["plan"]}

    def distill(self, student: Path, dest: Path, steps: int, lr: float = LR, seed: int = SEED) -> dict:
        """`run_distill` for `steps` steps -> {before: {loss, kl}, after: {loss, kl}, tokens, seconds}."""
        from minitron.recipes.distill import DistillOptions, run_distill

        t = time.perf_counter()
        s = run_distill(DistillOptions(teacher=self.teacher_dir, student=student, data=[self.train], out=dest,
                                       train=self.train_config(steps, lr=lr, seed=seed), seq_len=SEQ_LEN, eval_data=[self.heldout],
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
    reached, stopped = None, False
    t = time.perf_counter()
    while tr.step < cap:
        tr.train_step()
        out_of_time = time.perf_counter() - t > b.cfg["scratch_seconds"] and tr.step >= steps
        if tr.step in checkpoints or out_of_time:
            curve.append({"step": tr.step, "tokens": tr.step * tokens_per_step, **b.evaluate(student)})
            log(f"scratch: step {tr.step}/{cap}: loss {curve[-1]['loss']:.3f} (distilled {target:.3f})")
            if curve[-1]["loss"] <= target and tr.step >= steps:
                reached = curve[-1]
                break
            if out_of_time:
                stopped = True
                break
    same = next(c for c in curve if c["step"] == steps)
    return {"target_loss": target, "distill_tokens": minitron_row["tokens"], "same_tokens": same, "curve": curve,
            "reached": reached, "cap_tokens": tr.step * tokens_per_step,
            "stopped_by_time": stopped, "seconds": round(time.perf_counter() - t, 1)}


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
            ds = b.distill(d / "pruned", d / "distilled", b.cfg["depth_steps"], lr=DEPTH_LR)
            row.update(pruned=ds["before"], distilled=ds["after"], tokens=ds["tokens"])
        else:
            row.update(pruned=b.evaluate_dir(d / "pruned"), distilled=None)
        done[dropped] = row
        rows.append(row)
    return rows


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
    fresh_work_dir(work)
    log(f"{mode} run in {work}: {cfg}")

    from minitron.recipes.score import ScoreOptions, score_model

    b = Bench(cfg, work)
    a = b.arch
    teacher = {"params": a.total_params, "pattern": a.pattern, "layers": a.num_layers, "hidden": a.hidden_size,
               "ffn": a.intermediate_size, "mamba_heads": a.mamba_num_heads, "q_heads": a.num_attention_heads,
               **b.evaluate(b.teacher)}
    log(f"teacher: loss {teacher['loss']:.3f} on {cfg['eval_samples']} held-out blocks; scoring")
    scores = score_model(b.teacher_dir, [str(b.train)], ScoreOptions(
        samples=cfg["score_samples"], seq_len=SEQ_LEN, batch_size=8, layer_metric="kl", device="cpu",
        dtype="fp32", streaming=False)).scores
    res = {"mode": mode, "settings": cfg, "constants": {"lr": LR, "seed": SEED, "seq_len": SEQ_LEN,
           "width_shape": WIDTH_SHAPE, "drop_layers": DROP_LAYERS, "depth_lr": DEPTH_LR}, "teacher": teacher, "threads": args.threads, "load_start": load_start}
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
