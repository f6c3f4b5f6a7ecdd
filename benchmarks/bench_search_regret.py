"""The search's regret: does `minitron prune`'s shortlist pick what an exhaustive sweep would? (issue 15)

  OMP_NUM_THREADS=1 python benchmarks/bench_search_regret.py --quick        # ~4 min at load 5: checks the pipeline
  OMP_NUM_THREADS=1 python benchmarks/bench_search_regret.py                # the recorded run (24 min at load 5-9)
  OMP_NUM_THREADS=1 python benchmarks/bench_search_regret.py --json out.json
  OMP_NUM_THREADS=1 python benchmarks/bench_search_regret.py --memory-budget 6900000B   # a memory budget instead

On the bundled demo teacher (4.56M parameters, `minitron/assets/demo/teacher`) under `--target-params`
(or `--memory-budget`, engine none at 1,024 tokens) with the default search space (depth in steps of 1 for 10 layers, hidden/FFN in multiples of 32/64,
Mamba heads in multiples of the 4 groups; one attention layer kept):

1. **search**: `minitron prune --dry-run` as a user runs it (the library call `prune()`): the shortlist
   (band near the budget, spread across the axes), the zero-shot proxy on all of it, then
   `--candidate-distill-steps S` on the best `--distill-candidates`; its winner. Timed `--repeats` times
   (median wall and process CPU).
2. **sweep**: every feasible candidate of the same space, pruned with the same scores and distilled
   with the same procedure (the same training blocks, S steps, lr, seed: `recipes.candidates.distill_scores`), each
   judged on held-out blocks of `heldout.txt` that neither the search nor the training saw.

Regret = the winner's judged KL (and LM loss) minus the sweep's best. Beside it, from the same sweep:
the search without candidate distillation (proxy only), the previous main's choice (the proxy over the
8 *largest* feasible), the largest by parameters (no data), and oracle bounds (the best judged member of
the new shortlist, of the 8 largest). And the rank correlation of the zero-shot proxy with the judged
KL over the whole space. Single-threaded throughout (a shared 2-core machine): keep the space to tens of
candidates and S to tens of steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "minitron" / "assets" / "demo"
TEACHER = DEMO / "teacher"
TRAIN, HELDOUT = DEMO / "corpus" / "train.txt", DEMO / "corpus" / "heldout.txt"

FULL = {"target_params": "3.5M", "steps": 20, "seq_len": 128, "proxy_samples": 8, "distill_samples": 32,
        "judge_samples": 16, "lr": 5e-4, "shortlist": 8, "distill_candidates": 3, "band": 0.05, "repeats": 3,
        "score_samples": 16}
QUICK = FULL | {"target_params": "3.2M", "steps": 4, "proxy_samples": 4, "distill_samples": 8, "judge_samples": 4,
                "shortlist": 4, "distill_candidates": 2, "repeats": 1, "score_samples": 8}


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load()}] {msg}", file=sys.stderr, flush=True)


def shape_key(d) -> tuple:
    from minitron.prune.search import AXES

    get = (lambda k: d[k]) if isinstance(d, dict) else (lambda k: getattr(d, k))
    return tuple(get(k) for k in AXES)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline")
    ap.add_argument("--work", type=Path, help="scores directory (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--target-params", help="the search's parameter target (default 3.5M; quick 3.2M)")
    ap.add_argument("--memory-budget", help="search under this memory budget instead (engine none, 1,024 tokens), "
                                            "e.g. 4913904B: half the teacher's, as the demo")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.target_params:
        cfg["target_params"] = args.target_params
    if args.memory_budget:
        cfg["target_params"], cfg["memory_budget"] = None, args.memory_budget
    torch.manual_seed(0)
    from minitron.models.checkpoint import open_checkpoint
    from minitron.prune.search import enumerate_candidates, parse_params, rank_by_params
    from minitron.prune.select import least_important
    from minitron.recipes.candidates import distill_scores, proxy_scores
    from minitron.recipes.prune import PruneOptions, _model_and_blocks, prune, target_of
    from minitron.recipes.score import ScoreOptions, score_model

    start_load = load()
    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-regret-"))
    scores_dir = work / "scores"
    t = time.perf_counter()
    if not (scores_dir / "scores.safetensors").exists():  # --work keeps them between runs
        scores_dir.mkdir(parents=True, exist_ok=True)
        log(f"scoring the teacher ({cfg['score_samples']} x 256 tokens of train.txt)")
        score_model(TEACHER, [str(TRAIN)], ScoreOptions(samples=cfg["score_samples"], seq_len=256, batch_size=8,
                    layer_metric="kl", device="cpu", dtype="fp32", streaming=False)).scores.save(scores_dir)
    score_s = time.perf_counter() - t

    from minitron.memory import make_budget

    budget = make_budget(memory_budget=cfg["memory_budget"], engine="none") if cfg.get("memory_budget") else None
    opts = dict(model=TEACHER, scores=scores_dir, budget=budget, engine="none", context_length=1024,
                target_params=parse_params(cfg["target_params"]) if cfg["target_params"] else None,
                keep_layer_types="attention=1", data=[TRAIN], seq_len=cfg["seq_len"],
                proxy_samples=cfg["proxy_samples"], shortlist=cfg["shortlist"], band=cfg["band"],
                candidate_distill_steps=cfg["steps"], distill_candidates=cfg["distill_candidates"],
                distill_samples=cfg["distill_samples"], lr=cfg["lr"], top_k=0, dry_run=True, device="cpu")

    # ---------------------------------------------------------------- 1. the search, as a user runs it
    walls, cpus, docs = [], [], []
    for r in range(cfg["repeats"]):
        log(f"search {r + 1}/{cfg['repeats']}")
        w0, c0 = time.perf_counter(), time.process_time()
        docs.append(prune(PruneOptions(**opts)))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    doc = docs[0]
    same = all(shape_key(d["candidates"][0]) == shape_key(doc["candidates"][0]) for d in docs)
    rows = doc["candidates"]
    short = [c for c in rows if c.get("shortlisted")]
    winner = rows[0]
    log(f"winner: {doc['winner_reason']}")

    # ---------------------------------------------------------------- 2. the sweep of the same space
    o = PruneOptions(**opts)
    ckpt = open_checkpoint(TEACHER)
    arch = ckpt.arch
    o.seq_len = cfg["seq_len"]
    from minitron.importance.scores import Scores

    scores = Scores.load(scores_dir)
    target = target_of(o, arch)  # the search's own Target: limits, serving settings, --keep-layer-types
    keep_min = target.keep_min
    order = least_important(scores["layers"], arch, keep_min)
    space = {a: tuple(v) for a, v in doc["search_space"].items()}
    from minitron.prune.search import Range

    cands = enumerate_candidates(arch, {a: Range(*v) for a, v in space.items()}, drop_order=order, keep_min=keep_min,
                                 target=target)
    feasible = rank_by_params(cands)
    assert len(feasible) == doc["n_feasible"], (len(feasible), doc["n_feasible"])
    w0, c0 = time.perf_counter(), time.process_time()
    model, eval_blocks, train_blocks = _model_and_blocks(o, ckpt, n_eval=o.proxy_samples, n_train=o.distill_samples)
    from minitron.data import load_blocks
    from minitron.models.checkpoint import load_tokenizer

    judge = load_blocks([HELDOUT], load_tokenizer(TEACHER), seq_len=256, samples=cfg["judge_samples"], seed=0)
    log(f"sweep: {len(feasible)} feasible candidates x {cfg['steps']} distillation steps")
    dist = distill_scores(model, arch, feasible, scores, train_blocks, judge, steps=cfg["steps"], lr=cfg["lr"],
                          progress=lambda stage, n, tot: log(f"  distilled {n}/{tot}") if n % 5 == 0 or n == tot else None)
    sweep_wall, sweep_cpu = time.perf_counter() - w0, time.process_time() - c0
    zero = proxy_scores(model, arch, feasible, scores, eval_blocks)  # the search's proxy, every candidate

    by_shape = {shape_key(c): {"params": c.params, **d, **z} for c, d, z in zip(feasible, dist, zero, strict=True)}
    best_kl = min(v["distill_kl"] for v in by_shape.values())
    best_loss = min(v["distill_loss"] for v in by_shape.values())
    ranked_kl = sorted(by_shape, key=lambda k: by_shape[k]["distill_kl"])

    def judged(key, label):
        v = by_shape[key]
        return {"choice": label, "shape": dict(zip(("num_layers", "hidden_size", "ffn_size", "mamba_heads"),
                                                    (key[0], key[1], key[2], key[3]), strict=True)),
                "params": v["params"], "kl": v["distill_kl"], "loss": v["distill_loss"],
                "regret_kl": v["distill_kl"] - best_kl, "regret_loss": v["distill_loss"] - best_loss,
                "rank": 1 + ranked_kl.index(key)}

    largest8 = [shape_key(c) for c in feasible[:8]]
    short_keys = [shape_key(c) for c in short]
    choices = [
        judged(shape_key(winner), f"search: shortlist + proxy + {cfg['steps']}-step distillation of the best "
                                  f"{cfg['distill_candidates']} (the winner)"),
        judged(min(short_keys, key=lambda k: by_shape[k]["proxy_kl"]), "search without candidate distillation (proxy)"),
        judged(min(largest8, key=lambda k: by_shape[k]["proxy_kl"]), "previous main: proxy over the 8 largest"),
        judged(shape_key(feasible[0]), "largest by parameters (no --data)"),
        judged(min(short_keys, key=lambda k: by_shape[k]["distill_kl"]), "oracle: best judged of the new shortlist"),
        judged(min(largest8, key=lambda k: by_shape[k]["distill_kl"]), "oracle: best judged of the 8 largest"),
        judged(ranked_kl[0], "exhaustive sweep's best"),
    ]
    kls = [v["distill_kl"] for v in by_shape.values()]
    res = {
        "settings": cfg, "teacher": str(TEACHER.relative_to(ROOT)), "n_candidates": doc["n_candidates"],
        "n_feasible": doc["n_feasible"], "search_space": doc["search_space"], "shortlist": doc["shortlist"],
        "winner_reason": doc["winner_reason"], "same_winner_every_repeat": same,
        "search_wall_s": statistics.median(walls), "search_cpu_s": statistics.median(cpus), "search_walls": walls,
        "sweep_wall_s": sweep_wall, "sweep_cpu_s": sweep_cpu, "score_s": score_s, "choices": choices,
        "judged_kl": {"best": best_kl, "median": statistics.median(kls), "worst": max(kls)},
        "spearman_proxy_vs_judged_kl": spearman([v["proxy_kl"] for v in by_shape.values()], kls),
        "load_start": start_load, "load_end": load(), "threads": torch.get_num_threads(),
        "machine": f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}",
    }
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(render(res))


def render(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"teacher {r['teacher']}, "
        + (f"--target-params {s['target_params']}" if s["target_params"] else
           f"--memory-budget {s['memory_budget']} (engine none, 1,024 tokens)")
        + f": {r['n_feasible']} feasible of "
        f"{r['n_candidates']} candidates; shortlist {r['shortlist']['size']} of {r['shortlist']['in_band']} in the "
        f"{100 * s['band']:g}% band, spread over {', '.join(r['shortlist']['spread_axes'])}",
        f"every candidate judged after {s['steps']} distillation steps (lr {s['lr']}, {s['distill_samples']} blocks of "
        f"{s['seq_len']} tokens) on {s['judge_samples']} held-out blocks of 256 tokens; judged KL over the space: best "
        f"{r['judged_kl']['best']:.4f}, median {r['judged_kl']['median']:.4f}, worst {r['judged_kl']['worst']:.4f}",
        "",
        "| choice | layers / hidden / ffn / m.heads | params | judged KL | regret KL | judged loss | regret loss | rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["choices"]:
        sh = c["shape"]
        lines.append(f"| {c['choice']} | {sh['num_layers']} / {sh['hidden_size']} / {sh['ffn_size']} / "
                     f"{sh['mamba_heads']} | {c['params']:,} | {c['kl']:.4f} | {c['regret_kl']:+.4f} | "
                     f"{c['loss']:.4f} | {c['regret_loss']:+.4f} | {c['rank']} of {r['n_feasible']} |")
    lines += [
        "",
        f"search: {r['search_wall_s']:.1f} s wall, {r['search_cpu_s']:.1f} s CPU (median of {len(r['search_walls'])}: "
        f"{', '.join(f'{w:.1f}' for w in r['search_walls'])} s; same winner every time: {r['same_winner_every_repeat']}); "
        f"sweep: {r['sweep_wall_s']:.1f} s wall, {r['sweep_cpu_s']:.1f} s CPU "
        f"({r['sweep_wall_s'] / r['search_wall_s']:.1f}x the search); scoring (both need it): {r['score_s']:.1f} s",
        f"rank correlation (Spearman) of the zero-shot proxy KL with the judged KL over all {r['n_feasible']}: "
        f"{r['spearman_proxy_vs_judged_kl']:.3f}",
        f"winner: {r['winner_reason']}",
        f"load average {r['load_start']} at the start, {r['load_end']} at the end; {r['threads']} thread(s); "
        f"{r['machine']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
