"""Distillation recipe sweep (issue 18): which schedule / peak lr / temperature / loss recovers most per token?

  python benchmarks/distill_sweep.py --grid schedule --out /tmp/sweep.json          # schedule x peak lr
  python benchmarks/distill_sweep.py --grid recipe --base schedule=wsd,lr=4e-3 --out /tmp/sweep.json
  python benchmarks/distill_sweep.py --grid "demo;schedule=wsd,lr=4e-3" --seeds 0,1,2 --out /tmp/sweep.json
  python benchmarks/distill_sweep.py --report /tmp/sweep.json [more.json ...]      # docs/benchmarks/distill_sweep.md

The student is the all-axes cut of `benchmarks/ablation.py --only all` (ALL_AXES shape, DROP_ALL
layers by the default layer metric) with the default ranking (`signals.defaults()`, calibration draw 0:
32 blocks x 128 tokens); its ranking and dropped layers are scored once and cached in `--work`
(keyed by the teacher's weights), the student is re-pruned from them for every run (milliseconds).

Each recipe distils a fresh copy for `--steps` steps of 8 x 128 tokens (global batch 8, AdamW via
`minitron.distill.trainer.Trainer`: the library's loop, not a copy), data order `TrainConfig.seed`
(`--seeds`), and the held-out loss (the ablation's 32 blocks x 128 tokens of heldout.txt) is
measured at EVAL_AT steps: the tokens-to-recover curve. Recovered share at a step =
(pruned - loss) / (pruned - teacher).

Recipes are `KEY=VALUE,...` over TrainConfig fields (schedule, lr, min_lr, warmup_steps, loss,
temperature, ce_weight, top_k); unnamed fields take DEMO's values (the demo's recipe, which is what
the ablation's all-axes rows used). `demo` alone is DEMO. Grids:

    schedule   {wsd, cosine, constant} x lr {1e-3, 2e-3, 4e-3, 8e-3}, warmup 4, T 1, forward KL
    recipe     one axis at a time around --base: temperature 2, loss reverse-kl / jsd,
               ce_weight 0.5, warmup 0, min_lr 0
    "A;B;..."  explicit recipes

Results accumulate in `--out` (one row per recipe and seed; rows already there are skipped, so an
interrupted run resumes). Single thread by default (the machine is shared).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
EVAL_AT = (0, 5, 10, 20, 30, 40)
MICRO = 8  # blocks per step (global batch = micro batch: no accumulation)
DEMO = {"schedule": "cosine", "lr": 2e-3, "warmup_steps": 4, "loss": "forward-kl", "temperature": 1.0,
        "ce_weight": 0.0}
FIELDS = {"schedule": str, "lr": float, "min_lr": float, "warmup_steps": int, "loss": str, "temperature": float,
          "ce_weight": float, "top_k": int}
SHORT = {"schedule": "", "lr": "lr", "min_lr": "min", "warmup_steps": "wu", "loss": "", "temperature": "T",
         "ce_weight": "ce", "top_k": "k"}
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- recipes
def parse_recipe(spec: str) -> dict:
    spec = spec.strip()
    r = dict(DEMO)
    if spec in ("", "demo"):
        return r
    for item in spec.split(","):
        k, _, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if k == "warmup":
            k = "warmup_steps"
        if k not in FIELDS:
            raise SystemExit(f"unknown recipe field {k!r} in {spec!r} (expected {', '.join(FIELDS)})")
        r[k] = FIELDS[k](v)
    return r


def recipe_name(r: dict) -> str:
    """A stable label: the fields in FIELDS order, DEMO's included (so equal recipes get equal names)."""
    parts = []
    for k in FIELDS:
        if k not in r:
            continue
        v = r[k]
        if k == "loss":
            v = {"forward-kl": "fkl", "reverse-kl": "rkl"}.get(v, v)
        elif isinstance(v, float):
            v = f"{v:g}"
        parts.append(f"{SHORT[k]}{'=' if SHORT[k] else ''}{v}")
    return " ".join(parts)


def grid(name: str, base: dict) -> list[dict]:
    if name == "schedule":
        return [{**DEMO, "schedule": s, "lr": lr} for s in ("wsd", "cosine", "constant")
                for lr in (1e-3, 2e-3, 4e-3, 8e-3)]
    if name == "recipe":
        variants = [{}, {"temperature": 2.0}, {"loss": "reverse-kl"}, {"loss": "jsd"}, {"ce_weight": 0.5},
                    {"warmup_steps": 0}, {"min_lr": 0.0}]
        return [{**base, **v} for v in variants]
    return [parse_recipe(s) for s in name.split(";") if s.strip()]


# ---------------------------------------------------------------------- the student
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_ranking(b, work: Path, teacher: Path) -> tuple[dict, list[int]]:
    """The all-axes default ranking of `benchmarks/ablation.py` (`run_all_axes`, row "default"), cached."""
    from ablation import DROP_ALL

    from minitron.importance import signals
    from minitron.importance.width import kv_scores
    from minitron.prune.select import least_important

    key = sha256(teacher / "model.safetensors")[:16]
    cache = work / f"ranking-{key}.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        log(f"ranking from {cache}")
        return d["ranking"], d["dropped"]
    t = b.scores(0)
    r = dict(t)
    for axis, name in signals.defaults().items():
        r[axis] = t[f"candidate.{axis}.{name}"]
    r["kv_heads"] = kv_scores(r["attention_heads"], b.arch.num_key_value_heads)
    dropped = least_important(r["layers"], b.arch, {"*": 1})[:DROP_ALL]
    r = {k: v for k, v in r.items() if isinstance(v, torch.Tensor)}
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"ranking": r, "dropped": list(dropped), "teacher": str(teacher), "sha256": key}, cache)
    log(f"ranking scored, cached in {cache}")
    return r, list(dropped)


# ---------------------------------------------------------------------- one run
def run_recipe(b, student0, recipe: dict, seed: int, steps: int, eval_at: list[int]) -> dict:
    from minitron.distill.trainer import TrainConfig, Trainer

    model = copy.deepcopy(student0)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    r = dict(recipe)
    r["warmup_steps"] = min(r["warmup_steps"], steps)
    cfg = TrainConfig(steps=steps, micro_batch_size=MICRO, seed=seed, **r)
    trainer = Trainer(b.teacher, model, b.train_blocks, None, cfg)  # no eval inside: ours is below
    curve = [{"step": 0, "tokens": 0, "loss": b.loss(model.eval())}]
    model.train()
    lrs, t0 = [], time.perf_counter()

    def on_step(m):
        lrs.append(m["lr"])
        if m["step"] in eval_at:
            curve.append({"step": m["step"], "tokens": m["tokens"], "loss": b.loss(model.eval()), "kd": m["kd"]})
            model.train()

    trainer.train(on_step=on_step)
    model.eval()
    return {"curve": curve, "final": curve[-1]["loss"], "lrs": lrs, "seconds": round(time.perf_counter() - t0, 1),
            "config": {k: v for k, v in cfg.to_dict().items() if k in FIELDS or k in ("steps", "seed",
                                                                                     "global_batch_size")}}


def sweep(args) -> int:
    from ablation import ALL_AXES, SEQ_LEN, SETTINGS, Bench

    torch.set_num_threads(args.threads)
    res = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    cfg = dict(SETTINGS["full"])
    cfg["distill_levels"] = []
    b = Bench(args.teacher, cfg)
    ranking, dropped = default_ranking(b, args.work, args.teacher)
    student0, plan = b.student(ranking, ALL_AXES, dropped)
    student0.eval()
    res.update({"teacher": str(args.teacher), "teacher_loss": b.loss(b.teacher), "shape": ALL_AXES,
                "dropped": sorted(dropped), "params": plan.target().total_params, "pruned": b.loss(student0),
                "seq_len": SEQ_LEN, "micro_batch": MICRO, "eval_blocks": cfg["eval"], "threads": args.threads,
                "torch": torch.__version__})
    res.setdefault("commands", []).append(shlex.join(["python", "benchmarks/distill_sweep.py", *sys.argv[1:]]))
    res.setdefault("load", []).append({"start": os.getloadavg()})
    log(f"teacher {res['teacher_loss']:.3f}, pruned {res['pruned']:.3f} ({res['params']:,} params, "
        f"dropped {res['dropped']})")
    base = parse_recipe(args.base)
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_at = sorted({s for s in EVAL_AT if s <= args.steps} | {args.steps})
    done = {(r["name"], r["seed"], r["steps"]) for r in res["runs"]}

    def save():
        res["load"][-1]["end"] = os.getloadavg()
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    for recipe in grid(args.grid, base):
        name = recipe_name(recipe)
        for seed in seeds:
            if (name, seed, args.steps) in done:
                log(f"skip {name} seed {seed} (in {args.out})")
                continue
            row = run_recipe(b, student0, recipe, seed, args.steps, eval_at)
            res["runs"].append({"name": name, "recipe": recipe, "seed": seed, "steps": args.steps, **row})
            done.add((name, seed, args.steps))
            save()
            rec = (res["pruned"] - row["final"]) / (res["pruned"] - res["teacher_loss"])
            log(f"{name} seed {seed}: " + " ".join(f"{c['loss']:.3f}" for c in row["curve"])
                + f" ({rec:.1%} recovered, {row['seconds']} s)")
    save()
    return 0


# ---------------------------------------------------------------------- report
def tokens_to(curve: list[dict], pruned: float, teacher: float, share: float) -> float | None:
    """Tokens at which the recovered share first reaches `share` (linear between evaluations), or None."""
    target = pruned - share * (pruned - teacher)
    for a, c in zip(curve, curve[1:], strict=False):
        if c["loss"] <= target:
            if a["loss"] <= target:
                return a["tokens"]
            f = (a["loss"] - target) / (a["loss"] - c["loss"])
            return a["tokens"] + f * (c["tokens"] - a["tokens"])
    return None


def summarise(doc: dict) -> list[dict]:
    import statistics

    by: dict[str, list[dict]] = {}
    for r in doc["runs"]:
        by.setdefault(r["name"], []).append(r)
    P, T = doc["pruned"], doc["teacher_loss"]
    rows = []
    for name, runs in by.items():
        finals = [r["final"] for r in runs]
        seed0 = next((r for r in runs if r["seed"] == 0), runs[0])
        row = {"name": name, "recipe": runs[0]["recipe"], "seeds": sorted(r["seed"] for r in runs),
               "final0": seed0["final"], "mean": statistics.mean(finals),
               "sd": statistics.stdev(finals) if len(finals) > 1 else None,
               "recovered0": (P - seed0["final"]) / (P - T),
               "recovered": (P - statistics.mean(finals)) / (P - T), "curve0": seed0["curve"],
               "seconds": statistics.mean(r["seconds"] for r in runs)}
        for x in (0.5, 0.7, 0.8):
            row[f"t{int(x * 100)}"] = tokens_to(seed0["curve"], P, T, x)
        rows.append(row)
    demo = {r["seed"]: r["final"] for r in by.get(recipe_name(DEMO), [])}
    for row in rows:  # paired by seed: the data order is shared, so the difference is less noisy than either
        d = [r["final"] - demo[r["seed"]] for r in by[row["name"]] if r["seed"] in demo]
        row["vs_demo"] = statistics.mean(d) if d else None
        row["vs_demo_sd"] = statistics.stdev(d) if len(d) > 1 else None
    return rows


def fmt_tokens(t):
    return "—" if t is None else f"{t:,.0f}"


def report(paths: list[Path], md: Path) -> int:
    docs = [json.loads(p.read_text()) for p in paths]
    lines = ["# Distillation recipe sweep (issue 18)", "",
             "Generated by `python benchmarks/distill_sweep.py --report " + " ".join(str(p) for p in paths) + "`.",
             "", "Student: the all-axes cut of `benchmarks/ablation.py --only all` with the default ranking "
             "(hidden 160, FFN 256, attention heads 4 / KV 2, Mamba heads 8, head dim 12, 2 of 10 layers "
             "dropped). Each recipe distils it for 40 steps of 8 × 128 tokens (40,960 tokens) with "
             "`minitron.distill.trainer.Trainer`; held-out loss on 32 blocks × 128 tokens of "
             "`heldout.txt` at steps 0, 5, 10, 20, 30, 40. *Recovered* = (pruned − loss) / (pruned − "
             "teacher). *Tokens to X %*: linear between the evaluations, on seed 0's curve (— : not "
             "reached in 40 steps). Seeds are the data order (`TrainConfig.seed`); ± is the standard "
             "deviation over them. Unnamed fields: min_lr = lr / 10, AdamW β (0.9, 0.95), clip 1.0, "
             "no weight decay (TrainConfig's).", ""]
    plots = []
    for doc, path in zip(docs, paths, strict=True):
        rows = summarise(doc)
        P, T = doc["pruned"], doc["teacher_loss"]
        lines += [f"## Teacher `{doc['teacher'].replace(str(REPO) + '/', '')}`", "",
                  f"Teacher {T:.3f}, pruned {P:.3f} ({doc['params']:,} params, dropped layers {doc['dropped']}); "
                  f"{doc['threads']} thread, torch {doc['torch']}. Commands:", "", "```"]
        lines += doc.get("commands", []) + ["```", ""]
        loads = ", ".join(f"{ld['start'][0]:.1f} → {ld.get('end', ld['start'])[0]:.1f}" for ld in doc.get("load", []))
        lines += [f"Load average (1 min) at start → end of each command: {loads}.", ""]
        lines += ["| recipe | seeds | loss at 40 (seed 0) | mean ± sd | − demo's (paired) | recovered (seed 0) | "
                  "recovered (mean) | tokens to 50 % | 70 % | 80 % | s / run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: r["mean"]):
            sd = f" ± {r['sd']:.3f}" if r["sd"] is not None else ""
            label = r["name"] + (" (demo's)" if r["recipe"] == DEMO else "")
            vs = "" if r["vs_demo"] is None else f"{r['vs_demo']:+.3f}" + (
                f" ± {r['vs_demo_sd']:.3f}" if r["vs_demo_sd"] is not None else "")
            lines.append(f"| {label} | {','.join(map(str, r['seeds']))} | {r['final0']:.3f} | {r['mean']:.3f}{sd} | "
                         f"{vs} | {r['recovered0']:.1%} | {r['recovered']:.1%} | {fmt_tokens(r['t50'])} | {fmt_tokens(r['t70'])} | "
                         f"{fmt_tokens(r['t80'])} | {r['seconds']:.0f} |")
        lines += ["", "Loss at each evaluation (seed 0):", "",
                  "| recipe | " + " | ".join(f"step {c['step']}" for c in rows[0]["curve0"]) + " |",
                  "|---|" + "---|" * len(rows[0]["curve0"])]
        for r in sorted(rows, key=lambda r: r["mean"]):
            lines.append(f"| {r['name']} | " + " | ".join(f"{c['loss']:.3f}" for c in r["curve0"]) + " |")
        lines.append("")
        png = plot(doc, rows, md.parent / f"distill_sweep_{Path(path).stem}.png")
        if png:
            lines += [f"![loss vs tokens]({png.name})", ""]
            plots.append(png)
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md}" + "".join(f", {p}" for p in plots))
    return 0


def plot(doc: dict, rows: list[dict], png: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    best = sorted(rows, key=lambda r: r["mean"])[:4]
    demo = [r for r in rows if r["recipe"] == DEMO]
    chosen = best + [r for r in demo if r not in best]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in chosen:
        xs = [c["tokens"] for c in r["curve0"]]
        ax.plot(xs, [c["loss"] for c in r["curve0"]], marker="o", label=r["name"] + (" (demo)" if r in demo else ""))
    P, T = doc["pruned"], doc["teacher_loss"]
    for x in (0.7, 0.8):
        ax.axhline(P - x * (P - T), color="grey", lw=0.6, ls=":")
        ax.text(0, P - x * (P - T), f"{x:.0%} recovered", fontsize=7, va="bottom", color="grey")
    ax.axhline(T, color="black", lw=0.8, ls="--", label=f"teacher {T:.3f}")
    ax.set_xlabel("distillation tokens")
    ax.set_ylabel("held-out loss (nats)")
    ax.set_ylim(T - 0.05, min(P, T + 1.0) + 0.05)
    ax.set_title(f"all-axes student of {Path(doc['teacher']).name}: loss vs tokens (seed 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=REPO / "minitron" / "assets" / "demo" / "teacher")
    ap.add_argument("--work", type=Path, default=Path("/tmp/distill-sweep"), help="cache of the student's ranking")
    ap.add_argument("--out", type=Path, help="results JSON (appended to)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--grid", default="schedule", help="schedule, recipe, or 'SPEC;SPEC;...' (demo = the demo's)")
    ap.add_argument("--base", default="demo", help="the recipe the 'recipe' grid varies (KEY=VALUE,...)")
    ap.add_argument("--seeds", default="0", help="data-order seeds, comma-separated")
    ap.add_argument("--report", type=Path, nargs="+", help="write the Markdown report from these result files")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "benchmarks" / "distill_sweep.md")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report, args.md)
    if args.out is None:
        ap.error("--out is required (or --report)")
    return sweep(args)


if __name__ == "__main__":
    raise SystemExit(main())
