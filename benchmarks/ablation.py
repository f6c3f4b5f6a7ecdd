"""Per-axis ablation of the importance signals (issue 18): which ranking keeps the best units?

  python benchmarks/ablation.py --teacher minitron/assets/demo/teacher --out /tmp/abl-seed0.json
  python benchmarks/ablation.py --teacher /work/artifacts/teacher-seed1 --out /tmp/abl-seed1.json
  python benchmarks/ablation.py --quick --out /tmp/abl-quick.json       # pipeline check (minutes)
  python benchmarks/ablation_report.py /tmp/abl-seed0.json /tmp/abl-seed1.json   # tables + plots

For each axis alone (hidden, FFN, attention heads, KV heads, Mamba heads, Mamba head dim, depth) at
two cut levels (25 % and 50 % of the axis; KV heads 2 -> 1 only), every ranking is applied to the
teacher in memory (`make_plan` + `prune_model`) and the student's held-out loss is measured right
after pruning and after a fixed short distillation (`quick_distill`: DISTILL settings below, the
same data order for every student). Rankings:

    width   each candidate signal of `minitron.importance.signals` (one scoring pass, `all_metrics`),
            on `--draws` calibration draws (calibration blocks picked with seeds 0, 1, ...);
            weight magnitude (`quality_scores.magnitude_scores`); random (`--seeds` seeds)
    depth   one-shot by each layer metric (kl, mse, loss, cosine; one draw each), iterative kl
            (re-scored after each removal, `layer_scores(skip=...)`), random layer order
            (prune's rule: at least one attention layer kept)

Then the all-axes cut (ALL_AXES shape and DROP_ALL layers): the default ranking, the paper's, the
best candidates, magnitude and random, distilled with the demo's recipe scaled to 40 steps of
8 x 128 tokens (lr 2e-3, cosine, 4 warm-up steps), and the same architecture trained from scratch
on the same tokens until it matches (capped at `--scratch-factor` times the distillation's tokens).

Single thread by default (the machine is shared). Results: one JSON document (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_scores import load_state_dict, magnitude_scores, random_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "minitron" / "assets" / "demo" / "corpus"
SEQ_LEN = 128
SETTINGS = {
    # calib: calibration blocks per draw; eval: held-out blocks of SEQ_LEN; distill: per-axis steps
    "full": {"calib": 32, "eval": 32, "distill": 10, "all_steps": 40, "draws": 2, "seeds": 3, "distill_draws": 1},
    "quick": {"calib": 4, "eval": 4, "distill": 1, "all_steps": 2, "draws": 1, "seeds": 1, "distill_draws": 1},
}
# per axis: a lower lr than the demo's 2e-3 (at 1e-3 ten steps raised the loss of a student cut 25 %
# on one axis above its loss right after pruning: the students start close to the teacher)
DISTILL = {"lr": 5e-4, "schedule": "cosine", "warmup_steps": 1, "micro_batch_size": 8}  # per axis
ALL_DISTILL = {"lr": 2e-3, "schedule": "cosine", "warmup_steps": 4, "micro_batch_size": 8}  # the demo's recipe
ALL_AXES = {"hidden_size": 160, "ffn_size": 256, "attention_heads": 4, "mamba_heads": 8, "mamba_head_dim": 12}
DROP_ALL = 2
LAYER_METRICS = ("kl", "mse", "loss", "cosine")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


class Rows:
    """A result document of rows, rewritten whole to `out` after each row (a stopped run keeps its rows):
    {teacher, teacher_loss, command, load_start, load_end, rows}."""

    def __init__(self, out: Path, script: str, argv, teacher: Path, teacher_loss: float):
        self.out = out
        self.doc = {"teacher": str(teacher), "teacher_loss": teacher_loss,
                    "command": f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "load_start": os.getloadavg(), "rows": []}  # fmt: skip

    def __call__(self, **r) -> None:
        self.doc["rows"].append(r)
        self.doc["load_end"] = os.getloadavg()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.doc, indent=1) + "\n")
        log(json.dumps(r))


def cuts(arch) -> list[tuple[str, str, dict]]:
    """(axis, level, Shape fields) of every single-axis cut; the level is the share of the axis removed."""
    a = arch
    per_group = a.num_attention_heads // a.num_key_value_heads
    out = []
    for level, keep in (("25%", 0.75), ("50%", 0.5)):
        out += [("hidden", level, {"hidden_size": int(a.hidden_size * keep)}),
                ("ffn", level, {"ffn_size": int(a.intermediate_size * keep)}),
                ("attention_heads", level, {"attention_heads": int(per_group * keep) * a.num_key_value_heads}),
                ("mamba_heads", level, {"mamba_heads": int(a.mamba_num_heads * keep) // a.n_groups * a.n_groups}),
                ("mamba_head_dim", level, {"mamba_head_dim": int(a.mamba_head_dim * keep)})]
        if a.num_key_value_heads * keep == int(a.num_key_value_heads * keep) >= 1:
            out.append(("kv_heads", level, {"kv_heads": int(a.num_key_value_heads * keep)}))
    return out


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every issue-18 benchmark on one teacher takes: --teacher, --out, --threads (1: the
    machine is shared); the description is the first line of the script's `doc`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=REPO / "minitron" / "assets" / "demo" / "teacher")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def int_list(flag: str, text: str) -> list[int]:
    """A flag's comma-separated integers >= 0 ('' for none); anything else ends the script in one line."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if any(x < 0 for x in out):
        raise SystemExit(f"{flag}: expected integers >= 0, got {text!r}")
    return out


@dataclass
class Defaults:
    """The default all-axes cut's inputs (`Bench.defaults`); `kept`: the teacher layer of each student layer."""

    ranking: dict
    rotation: object
    compensation: object
    dropped: list
    kept: list


class Bench:
    def __init__(self, teacher: Path, cfg: dict):
        from minitron.data import load_blocks
        from minitron.models.checkpoint import load_model, load_tokenizer, open_checkpoint

        self.teacher_dir, self.cfg = teacher, cfg
        self.arch = open_checkpoint(teacher).arch
        tok = load_tokenizer(teacher)
        train, heldout = CORPUS / "train.txt", CORPUS / "heldout.txt"
        self.train_blocks = load_blocks([train], tok, seq_len=SEQ_LEN)
        self.eval_blocks = load_blocks([heldout], tok, seq_len=SEQ_LEN)[: cfg["eval"]]
        self.calib = [load_blocks([train], tok, seq_len=SEQ_LEN, samples=cfg["calib"], seed=d)
                      for d in range(cfg["draws"])]
        self.teacher = load_model(teacher, dtype="fp32", device="cpu").eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss(self, model) -> float:
        from minitron.evaluate.perplexity import score_blocks

        with torch.no_grad():
            return float(score_blocks(model, self.eval_blocks, batch_size=8).loss)

    def scores(self, draw: int, agg: str = "mean,l2", grams: bool = False) -> dict:
        """Every candidate signal and the layer metrics on calibration draw `draw` (and with `grams`, the
        statistics of `prune --compensation`)."""
        from minitron.importance.aggregate import Aggregation
        from minitron.importance.engine import InMemorySource
        from minitron.recipes.score import score_tensors

        t, _, _ = score_tensors(InMemorySource(self.teacher), self.arch, self.calib[draw], agg=Aggregation.parse(agg),
                                batch_size=8, layer_metric="kl", all_metrics=True, grams=grams)
        return t

    def defaults(self, draw: int = 0) -> Defaults:
        """Today's defaults for the all-axes cut on calibration draw `draw`: the default signals (the gated
        Mamba ones since 0.2: the scores' `mamba_heads` / `mamba_head_dim` are already those), the
        principal hidden basis, the output-projection refit, and the DROP_ALL layers the layer scores rank lowest."""
        from minitron.prune.compensation import Compensation
        from minitron.prune.rotation import from_covariance
        from minitron.prune.select import least_important

        t = self.scores(draw, grams=True)
        dropped = least_important(t["layers"], self.arch, {"*": 1})[:DROP_ALL]
        return Defaults(t, from_covariance(self.arch, t["hidden_covariance"]), Compensation(self.arch, t), dropped,
                        [i for i in range(self.arch.num_layers) if i not in dropped])  # fmt: skip

    def student(self, ranking: dict, shape: dict, dropped=(), rotation=None, compensation=None):
        from minitron.prune.apply import prune_model
        from minitron.prune.select import Shape, make_plan

        plan = make_plan(self.arch, Shape(**shape), ranking, dropped, rotation, compensation)
        return prune_model(self.teacher, plan), plan

    def measure(self, ranking: dict, shape: dict, dropped=(), steps: int = 0, recipe: dict | None = None,
                rotation=None, compensation=None, seed: int = 0, edit=None) -> dict:
        """Loss of the pruned student (`edit(model)` applied first, if given), and after `steps` steps."""
        from minitron.distill.trainer import quick_distill

        model, plan = self.student(ranking, shape, dropped, rotation, compensation)
        if edit is not None:
            edit(model)
        row = {"pruned": self.loss(model), "params": plan.target().total_params}
        if steps:
            for p in model.parameters():
                p.requires_grad_(True)
            torch.manual_seed(0)
            # (its own final evaluation is on one block only: the loss below is the one compared)
            recipe = dict(recipe or DISTILL)
            recipe["warmup_steps"] = min(recipe["warmup_steps"], steps)
            if seed:
                recipe["seed"] = seed  # the data order (TrainConfig.seed)
            quick_distill(self.teacher, model, self.train_blocks, self.eval_blocks[:1], steps, **recipe)
            row["distilled"] = self.loss(model)
        return row


def width_rankings(b: Bench, draws: list[dict], mag: dict, axis: str) -> list[tuple[str, str, int, dict]]:
    """(family, name, repeat, tensors) for every ranking of a width axis."""
    base = draws[0]
    out = []
    for d, t in enumerate(draws):
        for key in sorted(k for k in t if k.startswith(f"candidate.{axis}.")):
            out.append(("signal", key.rsplit(".", 1)[1], d, {**base, axis: t[key]}))
    out.append(("magnitude", "magnitude", 0, {**base, axis: mag[axis]}))
    for s in range(b.cfg["seeds"]):
        out.append(("random", "random", s, {**base, axis: random_scores(b.arch, seed=s)[axis]}))
    return out


def run_width(b: Bench, draws: list[dict], mag: dict, rows: list | None = None, save=lambda: None,
              axes=None) -> list[dict]:
    rows = [] if rows is None else rows
    for axis, level, shape in cuts(b.arch):
        if axes is not None and axis not in axes:
            continue
        for fam, name, rep, ranking in width_rankings(b, draws, mag, axis):
            distill = (fam != "signal" or rep < b.cfg["distill_draws"]) and level in b.cfg["distill_levels"]
            r = b.measure(ranking, shape, steps=b.cfg["distill"] if distill else 0)
            rows.append({"axis": axis, "level": level, "shape": shape, "family": fam, "ranking": name, "repeat": rep, **r})
            save()
            log(f"{axis} {level} {name}#{rep}: {r['pruned']:.3f}" + (f" -> {r['distilled']:.3f}" if "distilled" in r else ""))
    return rows


def depth_orders(b: Bench, draws: list[dict], k: int) -> list[tuple[str, str, int, list[int]]]:
    from minitron.importance.engine import layer_scores
    from minitron.prune.select import drop_sequence, least_important

    keep_min = {"*": 1}
    out = []
    for d, t in enumerate(draws):
        for m in LAYER_METRICS:
            s = t["layers"] if m == "kl" else t[f"layers_{m}"]
            out.append(("signal", m, d, least_important(s, b.arch, keep_min)[:k]))
        dropped: list[int] = []
        for _ in range(k):  # iterative: re-score with the layers already dropped skipped
            s = layer_scores(b.teacher, b.calib[d], metric="kl", skip=frozenset(dropped))
            order = sorted((i for i in range(b.arch.num_layers) if i not in dropped), key=lambda i: (float(s[i]), i))
            dropped.append(drop_sequence(b.arch, [*dropped, *order], keep_min)[len(dropped)])
        out.append(("signal", "kl_iterative", d, dropped))
    for s in range(b.cfg["seeds"]):
        perm = torch.randperm(b.arch.num_layers, generator=torch.Generator().manual_seed(s)).tolist()
        out.append(("random", "random", s, drop_sequence(b.arch, perm, keep_min)[:k]))
    return out


def run_depth(b: Bench, draws: list[dict]) -> list[dict]:
    rows = []
    n = b.arch.num_layers
    for level, k in (("25%", n // 4), ("50%", n // 2)):
        measured: dict[tuple, dict] = {}
        for fam, name, rep, dropped in depth_orders(b, draws, k):
            key = tuple(sorted(dropped))
            distill = (fam != "signal" or rep < b.cfg["distill_draws"]) and level in b.cfg["distill_levels"]
            if key not in measured or (distill and "distilled" not in measured[key]):
                measured[key] = b.measure(draws[0], {}, dropped, steps=b.cfg["distill"] if distill else 0)
            r = dict(measured[key])
            if not distill:
                r.pop("distilled", None)
            rows.append({"axis": "depth", "level": level, "shape": {"drop": k}, "family": fam, "ranking": name,
                         "repeat": rep, "dropped": sorted(dropped), **r})
            log(f"depth {level} {name}#{rep} drop {sorted(dropped)}: {r['pruned']:.3f}"
                + (f" -> {r['distilled']:.3f}" if "distilled" in r else ""))
    return rows


def run_all_axes(b: Bench, draws: list[dict], mag: dict, alts: list[dict[str, str]], baselines: bool = True) -> dict:
    """The all-axes cut by the default, the paper's and each `alts` set of signals, magnitude and random."""
    from minitron.importance import signals
    from minitron.importance.width import kv_scores
    from minitron.prune.select import least_important

    t = draws[0]

    def with_signals(chosen: dict) -> dict:
        r = dict(t)
        for axis, name in chosen.items():
            r[axis] = t[f"candidate.{axis}.{name}"]
        r["kv_heads"] = kv_scores(r["attention_heads"], b.arch.num_key_value_heads)
        return r

    paper = {axis: names[0] for axis, (_, names) in signals.WIDTH_METRICS.items()}
    alt_rankings = [(signals.format_metrics(alt), with_signals({**signals.defaults(), **alt})) for alt in alts]
    rankings = [("default", with_signals(signals.defaults())), ("paper", with_signals(paper))] + alt_rankings
    rankings += [("magnitude", {**mag, "layers": t["layers"]})]
    rankings += [(f"random#{s}", random_scores(b.arch, seed=s)) for s in range(b.cfg["seeds"])]
    if not baselines:
        rankings = alt_rankings
    rows = []
    steps = b.cfg["all_steps"]
    for name, r in rankings:
        dropped = least_important(r["layers"], b.arch, {"*": 1})[:DROP_ALL]
        m = b.measure(r, ALL_AXES, dropped, steps=steps, recipe=ALL_DISTILL)
        rows.append({"ranking": name, "dropped": sorted(dropped), **m})
        log(f"all axes {name}: {m['pruned']:.3f} -> {m['distilled']:.3f} ({m['params']:,} params)")
    return {"shape": ALL_AXES, "drop": DROP_ALL, "steps": steps, "recipe": ALL_DISTILL, "alternatives": alts, "rows": rows,
            "tokens": steps * ALL_DISTILL["micro_batch_size"] * SEQ_LEN}


def run_all_grid(b: Bench, draws: list[dict]) -> list[dict]:
    """The all-axes cut right after pruning (no distillation) for every combination of the aggregation,
    the hidden signal, the depth order and the contribution signals (on or off), on every draw."""
    from minitron.importance import signals
    from minitron.importance.width import kv_scores
    from minitron.prune.select import least_important

    n_drop = DROP_ALL
    contrib = {"ffn": "act_down", "attention_heads": "act_out", "mamba_heads": "gated_out", "mamba_head_dim": "gated"}
    rows = []
    for d in range(len(draws)):
        for agg in ("mean,l2", "l2,l2", "mean,mean", "l2,mean"):
            t = draws[d] if agg == "mean,l2" else b.scores(d, agg)
            for hidden in signals.WIDTH_METRICS["hidden"][1]:
                for use_contrib in (False, True):
                    chosen = {**signals.defaults(), "hidden": hidden, **(contrib if use_contrib else {})}
                    r = dict(t)
                    for axis, name in chosen.items():
                        r[axis] = t[f"candidate.{axis}.{name}"]
                    r["kv_heads"] = kv_scores(r["attention_heads"], b.arch.num_key_value_heads)
                    for depth in ("kl", "mse", "cosine"):
                        s = t["layers"] if depth == "kl" else t[f"layers_{depth}"]
                        dropped = least_important(s, b.arch, {"*": 1})[:n_drop]
                        m = b.measure(r, ALL_AXES, dropped)
                        rows.append({"draw": d, "aggregation": agg, "hidden": hidden, "contributions": use_contrib,
                                     "depth": depth, "dropped": sorted(dropped), **m})
                        log(f"grid draw {d} {agg} hidden={hidden} contrib={use_contrib} {depth} {sorted(dropped)}: "
                            f"{m['pruned']:.3f}")
    return rows


def from_scratch(b: Bench, ranking: dict, dropped, target: float, steps: int, factor: int) -> dict:
    """The all-axes architecture from random weights, next-token loss (AdamW, constant lr, the distillation's
    data order), evaluated every `steps` steps until it matches `target` or has seen `factor` x the tokens."""
    from transformers import AutoModelForCausalLM

    from minitron.models.checkpoint import hf_config

    _, plan = b.student(ranking, ALL_AXES, dropped)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(plan.target().to_config()), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=ALL_DISTILL["lr"], weight_decay=0.0)
    curve, done = [], 0
    for _ in range(factor):
        _lm_steps(b, model, opt, done, steps)
        done += steps
        curve.append({"steps": done, "tokens": done * 8 * SEQ_LEN, "loss": b.loss(model)})
        log(f"scratch: {done} steps: {curve[-1]['loss']:.3f} (target {target:.3f})")
        if curve[-1]["loss"] <= target:
            break
    return {"target": target, "curve": curve, "matched": curve[-1]["loss"] <= target}


def _lm_steps(b: Bench, model, opt, start: int, steps: int) -> None:
    """Steps start..start+steps-1 of next-token loss on the distillation's blocks (its order: `step_indices`)."""
    from minitron.distill.sampling import step_indices
    from minitron.losses.divergence import lm_loss

    model.train()
    for s in range(start, start + steps):
        ids = b.train_blocks[step_indices(s, b.train_blocks.shape[0], 8, 0)]
        loss = lm_loss(model(input_ids=ids, use_cache=False).logits, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=REPO / "minitron" / "assets" / "demo" / "teacher")
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="width,depth,all", help="studies to run: width, depth, grid, all")
    ap.add_argument("--alt", action="append", default=[],
                    help="AXIS=NAME,... signals of one more all-axes ranking (repeatable; the rest at their defaults)")
    ap.add_argument("--alt-only", action="store_true", help="the all-axes cut for the --alt rankings only "
                    "(no baselines, no from-scratch run; the report adds them to the teacher's -all run)")
    ap.add_argument("--distill-levels", default="25%,50%", help="cut levels whose students are distilled")
    ap.add_argument("--axes", default=None, help="width axes to run (default: all), e.g. kv_heads,mamba_heads")
    ap.add_argument("--seeds", type=int, default=None, help="random seeds (default: the mode's)")
    ap.add_argument("--scratch-factor", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(SETTINGS["quick" if args.quick else "full"])
    cfg["distill_levels"] = args.distill_levels.split(",")
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    from minitron.importance.signals import parse_width_metrics

    res = {"teacher": str(args.teacher), "settings": cfg, "distill": DISTILL, "seq_len": SEQ_LEN,
           "command": "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "load_start": os.getloadavg(), "threads": args.threads, "torch": torch.__version__}
    b = Bench(args.teacher, cfg)
    res["teacher_loss"] = b.loss(b.teacher)
    res["teacher_params"] = b.arch.total_params
    log(f"teacher {args.teacher}: loss {res['teacher_loss']:.3f} on {cfg['eval']} x {SEQ_LEN} held-out tokens")
    draws = [b.scores(d) for d in range(cfg["draws"])]
    mag = magnitude_scores(load_state_dict(args.teacher), b.arch)
    only = set(args.only.split(","))

    def save():
        res["seconds"] = round(time.perf_counter() - T0, 1)
        res["load_end"] = os.getloadavg()
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    if "width" in only:
        res["width"] = []
        run_width(b, draws, mag, res["width"], save,  # saved after every student: a killed run keeps its rows
                  axes=None if args.axes is None else set(args.axes.split(",")))
        save()
    if "depth" in only:
        res["depth"] = run_depth(b, draws)
        save()
    if "grid" in only:
        res["all_grid"] = run_all_grid(b, draws)
        save()
    if "all" in only:
        res["all_axes"] = run_all_axes(b, draws, mag, [parse_width_metrics([a]) for a in args.alt],
                                       baselines=not args.alt_only)
        if not args.alt_only:
            default_row = res["all_axes"]["rows"][0]
            res["scratch"] = from_scratch(b, draws[0], default_row["dropped"], default_row["distilled"],
                                          res["all_axes"]["steps"], args.scratch_factor)
        save()
    save()
    log(f"done in {res['seconds'] / 60:.1f} min -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
