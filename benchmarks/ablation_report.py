"""Tables and plots of `benchmarks/ablation.py` results (one JSON per teacher).

  python benchmarks/ablation_report.py A.json [B.json ...] --doc docs/benchmarks/ablation.md

Writes the markdown report (per-axis tables with the noise, the default-vs-best comparison, the
all-axes cut, from scratch) and one plot per axis beside it (`ablation_<axis>.png`).
Noise: the standard deviation over the repeats of a ranking (calibration draws of a signal, seeds of
random; magnitude has none), shown as `mean ± sd`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minitron.importance.signals import WIDTH_METRICS  # noqa: E402

AXES = ("hidden", "ffn", "attention_heads", "kv_heads", "mamba_heads", "mamba_head_dim", "depth")
DEFAULTS = {**{a: d for a, (d, _) in WIDTH_METRICS.items()}, "kv_heads": "act", "depth": "kl"}
PAPER = {**{a: n[0] for a, (_, n) in WIDTH_METRICS.items()}, "kv_heads": "act", "depth": "kl"}


def label(path: str) -> str:
    p = Path(path)
    return "bundled teacher" if p.parts[-3:] == ("assets", "demo", "teacher") else p.name


def stats(values: list[float]) -> tuple[float, float, int]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    m, sd, n = stats(values)
    return f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}"


def grouped(rows: list[dict], axis: str, level: str) -> dict[str, dict[str, list[float]]]:
    """ranking -> {"pruned": [...], "distilled": [...]} over its repeats."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["axis"] == axis and r["level"] == level:
            g = out.setdefault(r["ranking"], {"pruned": [], "distilled": []})
            g["pruned"].append(r["pruned"])
            if "distilled" in r:
                g["distilled"].append(r["distilled"])
    return out


def rows_of(res: dict) -> list[dict]:
    return res.get("width", []) + res.get("depth", [])


def name_of(axis: str, ranking: str) -> str:
    tags = []
    if ranking == DEFAULTS.get(axis):
        tags.append("default")
    if ranking == PAPER.get(axis):
        tags.append("paper")
    return ranking + (f" ({', '.join(tags)})" if tags else "")


def axis_table(results: list[dict], axis: str) -> str:
    levels = sorted({r["level"] for res in results for r in rows_of(res) if r["axis"] == axis})
    has_d = any("distilled" in r for res in results for r in rows_of(res) if r["axis"] == axis)
    head = ["ranking"]
    for res in results:
        for lv in levels:
            head += [f"{label(res['teacher'])} {lv}"] + ([f"{label(res['teacher'])} {lv} distilled"] if has_d else [])
    names: list[str] = []
    for res in results:
        for r in rows_of(res):
            if r["axis"] == axis and r["ranking"] not in names:
                names.append(r["ranking"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [name_of(axis, n)]
        for res in results:
            for lv in levels:
                g = grouped(rows_of(res), axis, lv).get(n, {"pruned": [], "distilled": []})
                cells += [fmt(g["pruned"])] + ([fmt(g["distilled"])] if has_d else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: list[dict]) -> str:
    """Per axis, teacher and level: the default, the best other signal, their difference and the noise."""
    lines = ["| axis | teacher | cut | default (pruned) | best other signal | Δ pruned (default − best) | noise (sd) "
             "| Δ distilled | noise distilled (random sd) |", "|---|---|---|---|---|---|---|---|---|"]
    for axis in AXES:
        for res in results:
            rows = rows_of(res)
            for lv in sorted({r["level"] for r in rows if r["axis"] == axis}):
                g = grouped(rows, axis, lv)
                d = DEFAULTS[axis]
                if d not in g:
                    continue
                others = {k: v for k, v in g.items() if k not in (d, "random", "magnitude")}
                if not others:
                    continue
                best = min(others, key=lambda k: stats(others[k]["pruned"])[0])
                dm, dsd, _ = stats(g[d]["pruned"])
                bm, bsd, _ = stats(others[best]["pruned"])
                dd = (stats(g[d]["distilled"])[0] - stats(others[best]["distilled"])[0]
                      if g[d]["distilled"] and others[best]["distilled"] else float("nan"))
                rsd = stats(g["random"]["distilled"])[1] if "random" in g and g["random"]["distilled"] else float("nan")
                lines.append(f"| {axis} | {label(res['teacher'])} | {lv} | {d} {dm:.3f} | {best} {bm:.3f} | "
                             f"{dm - bm:+.3f} | {max(dsd, bsd):.3f} | {dd:+.3f} | {rsd:.3f} |".replace("+nan", "–").replace("nan", "–"))
    return "\n".join(lines)


def all_axes_table(results: list[dict]) -> str:
    lines = ["| teacher | ranking | params | loss pruned | loss distilled | gap ÷ random's gap (pruned) "
             "| gap recovered by distillation |", "|---|---|---|---|---|---|---|"]
    for res in results:
        aa = res.get("all_axes")
        if not aa:
            continue
        t = res["teacher_loss"]
        rnd = [r for r in aa["rows"] if r["ranking"].startswith("random")]
        rnd_gap = statistics.fmean(r["pruned"] for r in rnd) - t
        for r in aa["rows"]:
            gap = r["pruned"] - t
            rec = (r["pruned"] - r["distilled"]) / gap if gap > 0 else float("nan")
            lines.append(f"| {label(res['teacher'])} (teacher {t:.3f}) | {r['ranking']} | {r['params']:,} | "
                         f"{r['pruned']:.3f} | {r['distilled']:.3f} | {gap / rnd_gap:.2f} | {100 * rec:.0f} % |")
    return "\n".join(lines)


LOG_ROW = re.compile(r"\] (\w+) (\d+%) (\w+)#(\d+)(?: drop \[[\d, ]*\])?: ([\d.]+) -> ([\d.]+)$")


def parse_log(path: Path) -> list[dict]:
    """The distilled rows of an `ablation.py` log (a run stopped before it wrote its JSON)."""
    out = []
    for line in path.read_text().splitlines():
        m = LOG_ROW.search(line.strip())
        if m:
            out.append({"axis": m[1], "level": m[2], "ranking": m[3], "repeat": int(m[4]), "pruned": float(m[5]),
                        "distilled": float(m[6])})
    return out


def partial_table(res: dict) -> str:
    rows = res.get("partial_distill", [])
    lines = ["| axis | cut | ranking | loss pruned | loss distilled |", "|---|---|---|---|---|"]
    for axis in AXES:
        for lv in ("25%", "50%"):
            g = grouped(rows, axis, lv)
            for n, v in g.items():
                lines.append(f"| {axis} | {lv} | {name_of(axis, n)} | {fmt(v['pruned'])} | {fmt(v['distilled'])} |")
    return "\n".join(lines)


def grid_table(res: dict, top: int = 8) -> str:
    """The all-axes prune-only grid: each combination's mean (± sd over draws) loss, best first, and the default."""
    combos: dict[tuple, list[float]] = {}
    for r in res.get("all_grid", []):
        combos.setdefault((r["aggregation"], r["hidden"], r["contributions"], r["depth"]), []).append(r["pruned"])
    if not combos:
        return ""
    t = res["teacher_loss"]
    rnd = [r["pruned"] for r in res.get("all_axes", {}).get("rows", []) if r["ranking"].startswith("random")]
    rnd_gap = statistics.fmean(rnd) - t if rnd else float("nan")
    order = sorted(combos, key=lambda k: statistics.fmean(combos[k]))
    default = ("mean,l2", "sum", False, "kl")
    keep = order[:top] + ([default] if default not in order[:top] else [])
    lines = [f"{label(res['teacher'])} (teacher {t:.3f}; random's mean gap {rnd_gap:.3f}):", "",
             "| rank | aggregation | hidden | contribution signals | depth | loss pruned | gap ÷ random's |",
             "|---|---|---|---|---|---|---|"]
    for k in keep:
        tag = " (default)" if k == default else ""
        lines.append(f"| {order.index(k) + 1}{tag} | {k[0]} | {k[1]} | {'on' if k[2] else 'off'} | {k[3]} | "
                     f"{fmt(combos[k])} | {(statistics.fmean(combos[k]) - t) / rnd_gap:.2f} |")
    return "\n".join(lines)


def scratch_table(results: list[dict]) -> str:
    lines = ["| teacher | distilled loss (default ranking, tokens) | from scratch: steps → loss |", "|---|---|---|"]
    for res in results:
        s = res.get("scratch")
        if not s:
            continue
        curve = ", ".join(f"{c['steps']} → {c['loss']:.3f}" for c in s["curve"])
        verdict = "matched" if s["matched"] else f"not matched within {s['curve'][-1]['tokens']:,} tokens"
        lines.append(f"| {label(res['teacher'])} | {s['target']:.3f} ({res['all_axes']['tokens']:,}) | {curve} ({verdict}) |")
    return "\n".join(lines)


def plot_axis(results: list[dict], axis: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    whats = ["pruned"] + (["distilled"] if any("distilled" in r for res in results for r in rows_of(res)
                                               if r["axis"] == axis) else [])
    fig, panels = plt.subplots(1, len(whats), figsize=(5.5 * len(whats) + 1, 3.8), squeeze=False)
    panels = panels[0]
    markers = ["o", "s", "^", "D"]
    names: list[str] = []
    for res in results:
        for r in rows_of(res):
            if r["axis"] == axis and r["ranking"] not in names:
                names.append(r["ranking"])
    for ax, what in zip(panels, whats, strict=True):
        k = 0
        for res in results:
            rows = rows_of(res)
            for lv in sorted({r["level"] for r in rows if r["axis"] == axis}):
                g = grouped(rows, axis, lv)
                xs, ys, es = [], [], []
                for i, n in enumerate(names):
                    if n in g and g[n][what]:
                        m, sd, _ = stats(g[n][what])
                        xs.append(i + 0.08 * (k - 1.5))
                        ys.append(m - res["teacher_loss"])
                        es.append(sd)
                ax.errorbar(xs, ys, yerr=es, fmt=markers[k % 4], capsize=3, label=f"{label(res['teacher'])} cut {lv}")
                k += 1
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([name_of(axis, n) for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("held-out loss − teacher's (nats)")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{axis}: after pruning" if what == "pruned" else f"{axis}: after the short distillation")
        ax.grid(alpha=0.3)
    panels[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: list[dict], doc: Path) -> str:
    parts = ["# Per-axis ablation of the importance signals (issue 18)", "",
             "Generated by `benchmarks/ablation_report.py` from `benchmarks/ablation.py` runs:", ""]
    for res in results:
        s = res["settings"]
        la = ", ".join(f"{x:.1f}" for x in res.get("load_start", []))
        le = ", ".join(f"{x:.1f}" for x in res.get("load_end", []))
        parts.append(f"- `{res['command']}`: teacher `{res['teacher']}` ({res['teacher_params']:,} params, held-out "
                     f"loss {res['teacher_loss']:.3f}); {s['calib']} calibration blocks × {res['seq_len']} tokens per "
                     f"draw, {s['draws']} draws; random seeds {s['seeds']}; {s['eval']} held-out blocks × "
                     f"{res['seq_len']}; distillation {s['distill']} steps of 8 × {res['seq_len']} tokens "
                     f"({res['distill']}); {res['threads']} thread, {res.get('seconds', 0) / 60:.0f} min, load "
                     f"(1/5/15 min) {la} at the start, {le} at the end"
                     + "".join(f"; also `{c}`" for c in res.get("commands", [])))
    parts += ["", "Loss: mean next-token NLL (nats) on the held-out blocks. `± sd`: over the calibration draws "
              "(signals) or the seeds (random); where a run distilled (`--distill-levels`), it did so for the first "
              "draw of each signal and every random seed. The default is marked; `paper` is Minitron's / Minitron-SSM's signal.", ""]
    for axis in AXES:
        if not any(r["axis"] == axis for res in results for r in rows_of(res)):
            continue
        png = doc.parent / f"ablation_{axis}.png"
        plot_axis(results, axis, png)
        parts += [f"## {axis}", "", axis_table(results, axis), "", f"![{axis}]({png.name})", ""]
    for res in results:
        if res.get("partial_distill"):
            parts += [f"## After the short distillation: {label(res['teacher'])} (partial)", "",
                      f"From the log of an earlier run with the per-axis distillation on (first calibration draw of "
                      f"each signal, random seeds 0–2; {res['settings']['distill']} steps of 8 × {res['seq_len']} "
                      f"tokens, {res['distill']}); it was stopped for time after these rows.", "",
                      partial_table(res), ""]
    parts += ["## Default against the best other signal", "",
              "Δ > 0: the other signal leaves a lower loss. A default changes only when Δ exceeds the noise on "
              "both teachers.", "", verdicts(results), ""]
    if any(res.get("all_axes") for res in results):
        aa = next(res["all_axes"] for res in results if res.get("all_axes"))
        parts += ["## All axes at once", "",
                  f"Shape {aa['shape']}, {aa['drop']} layers dropped (by each ranking's layer scores; random: random "
                  f"order), distilled {aa['steps']} steps of 8 × 128 tokens ({aa['recipe']}). Other rankings: the default signals with the named axes replaced. "
                  "Gap: loss − teacher's; random's gap is the mean over its seeds.", "",
                  all_axes_table(results), "", "### Right after pruning: every combination", "",
                  "Aggregation (`--aggregation`) × hidden signal × the contribution signals (ffn=act_down, "
                  "attention_heads=act_out, mamba_heads=gated_out, mamba_head_dim=gated) on or off × the layer "
                  "metric that picks the dropped layers; mean ± sd over the calibration draws; no distillation.", ""]
        for res in results:
            if res.get("all_grid"):
                parts += [grid_table(res), ""]
        parts += ["### From scratch", "",
                  "The default-ranking architecture from random weights, next-token loss, AdamW at the same peak lr "
                  "(constant), the same data order.", "", scratch_table(results), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/ablation.md")
    args = ap.parse_args(argv)
    results = []
    for p in args.results:
        res = json.loads(p.read_text())
        log = p.with_name(p.stem + "-partial-distill.log")  # distilled rows of an earlier, stopped run
        if log.is_file():
            res["partial_distill"] = parse_log(log)
        for suffix in ("-all", "-grid", "-all-alt"):  # separate runs of the same teacher, if any
            extra = p.with_name(p.stem + suffix + ".json")
            if extra.is_file():
                more = json.loads(extra.read_text())
                if suffix == "-all-alt" and "all_axes" in res:  # --alt-only rows join the baselines' table
                    res["all_axes"]["rows"] += more["all_axes"]["rows"]
                else:
                    res.update({k: more[k] for k in ("all_axes", "scratch", "all_grid") if k in more})
                res.setdefault("commands", []).append(more["command"])
        results.append(res)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(render(results, args.doc) + "\n")
    print(args.doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
