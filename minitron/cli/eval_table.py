"""`minitron eval`'s comparison table, drawn with rich from the `--json` document (`minitron.evaluate.table`
computes the relative columns)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


# ---------------------------------------------------------------------- rendering
def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _rel_ratio(x, first: bool) -> str:
    return "" if first or x is None else f" [dim]({x:.2f}x)[/dim]"


def _rel_diff(x, first: bool, unit: str = "") -> str:
    return "" if first or x is None else f" [dim]({x:+.3f}{unit})[/dim]"


def task_columns(doc: dict) -> list[tuple[str, str]]:
    """(task, metric) columns: the requested tasks' acc (or first metric), in the order asked."""
    cols = []
    first = doc["models"][0].get("tasks") or {}
    names = [t for t in doc.get("settings", {}).get("tasks") or [] if t in first] or list(first)
    for t in names:
        metrics = [m for m in first[t] if not m.endswith("_stderr") and m != "samples"]
        if metrics:
            cols.append((t, "acc" if "acc" in metrics else metrics[0]))
    return cols


def render(doc: dict, console: Console) -> None:
    from minitron.fmt import fmt_bytes, fmt_params

    models = doc["models"]
    has = {k: any(m.get(k) is not None for m in models) for k in ("loss", "kl", "throughput", "memory", "fit", "vllm")}
    t = Table(title=f"reference: {models[0]['name']}", title_justify="left")
    t.add_column("model")
    t.add_column("params", justify="right")
    if has["loss"]:
        t.add_column("loss (nats)", justify="right")
        t.add_column("perplexity", justify="right")
    if has["kl"]:
        t.add_column("KL to teacher", justify="right")
    cols = task_columns(doc)
    for task, metric in cols:
        t.add_column(f"{task} {metric}", justify="right")
    if has["memory"]:
        mm = next(m["memory"] for m in models if m.get("memory"))
        dtype = f" ({mm['dtype']})" if mm.get("dtype") else ""
        t.add_column(f"memory @ {mm['context_length']:,}{dtype}", justify="right")
    if has["fit"]:
        t.add_column("max sequences", justify="right")
    if has["vllm"]:
        t.add_column("vLLM greedy = HF", justify="right")
        t.add_column("gen tok/s HF", justify="right")
        t.add_column("gen tok/s vLLM", justify="right")
        ctx = next(m["vllm"]["cache"]["context_length"] for m in models if m.get("vllm"))
        t.add_column(f"vLLM KV+state/seq @ {ctx:,} (model)", justify="right")
    if has["throughput"]:
        t.add_column("prefill tok/s", justify="right")
        t.add_column("decode tok/s", justify="right")
        if any((m.get("throughput") or {}).get("peak_memory_bytes") for m in models):
            t.add_column("peak GPU mem (model)", justify="right")
    for i, m in enumerate(models):
        rel, first = m.get("relative") or {}, i == 0
        cells = [m["name"], fmt_params(m.get("params")) + _rel_ratio(rel.get("params"), first)]
        if has["loss"]:
            cells.append(_f(m.get("loss"), ".4f") + _rel_diff(rel.get("loss"), first))
            cells.append(_f(m.get("perplexity"), ".3f") + _rel_ratio(rel.get("perplexity"), first))
        if has["kl"]:
            cells.append(_f(m.get("kl"), ".4f"))
        for task, metric in cols:
            v = (m.get("tasks") or {}).get(task, {}).get(metric)
            cells.append(_f(v, ".4f") + _rel_diff((rel.get("tasks") or {}).get(task, {}).get(metric), first))
        if has["memory"]:
            mem = m.get("memory") or {}
            cells.append(fmt_bytes(mem.get("total_bytes")) + _rel_ratio(rel.get("memory"), first))
        if has["fit"]:
            fit = m.get("fit") or {}
            cells.append(_f(fit.get("max_sequences"), ",d") + _rel_ratio(rel.get("max_sequences"), first))
        if has["vllm"]:
            cells.extend(_vllm_cells(m.get("vllm"), rel, first))
        if has["throughput"]:
            tp = m.get("throughput") or {}
            cells.append(_f(tp.get("prefill_tokens_per_second"), ",.1f")
                         + _rel_ratio(rel.get("prefill_tokens_per_second"), first))  # fmt: skip
            cells.append(_f(tp.get("decode_tokens_per_second"), ",.1f")
                         + _rel_ratio(rel.get("decode_tokens_per_second"), first))  # fmt: skip
            if any((x.get("throughput") or {}).get("peak_memory_bytes") for x in models):
                cells.append(
                    f"{fmt_bytes(tp.get('peak_memory_bytes'))} ({fmt_bytes(tp.get('memory_model_bytes'))})"
                )
        t.add_row(*cells)
    console.print(t)
    s = doc.get("settings", {})
    notes = []
    if has["loss"]:
        notes.append(
            f"loss/perplexity: {s.get('blocks')} blocks x {s.get('seq_len')} tokens of {', '.join(s.get('data') or [])}"
        )
    if has["kl"]:
        notes.append(f"KL(teacher || model) per token, teacher {s.get('teacher')}")
    if has["memory"]:
        from minitron.memory import describe_memory

        mm = next(m["memory"] for m in models if m.get("memory"))
        if "dtype" in mm:
            notes.append(f"memory: the memory model at {describe_memory(mm)} (not the {s.get('dtype')} used to evaluate)")
    if has["throughput"]:
        tp = s.get("throughput") or {}
        notes.append(f"throughput: batch {tp.get('batch_size')}, prompt {tp.get('prompt_len')}, "
                     f"{tp.get('gen_len')} decode steps, median of {tp.get('runs')} on {s.get('device')}")  # fmt: skip
    for m in models:  # --tensor-parallel: a model whose widths vLLM would refuse to shard
        if m.get("tensor_parallel_problems"):
            notes.append(f"{m['name']}: vLLM cannot shard it over {m['memory']['tensor_parallel']} GPUs ("
                         + "; ".join(f"{p['flag']}: {p['rule']}" for p in m["tensor_parallel_problems"]) + ")")
    if has["fit"]:
        b = s.get("budget") or {}
        notes.append(f"max sequences: concurrent sequences of {mm['context_length']:,} tokens in "
                     f"{fmt_bytes(b.get('budget_bytes'))} ({b.get('gpu') or 'budget'}, engine {mm.get('engine')})")
    if has["vllm"]:
        v = next(m["vllm"] for m in models if m.get("vllm"))
        notes.append(f"vLLM {v['version']} ({v['dtype']}): greedy {v['greedy']['tokens']} tokens on "
                     f"{v['greedy']['prompts']} prompts; gen tok/s = batch x gen-len / (prefill + decode) time, "
                     "same prompts in both engines")
    for n in notes:
        console.print(f"[dim]{n}[/dim]")


def _vllm_cells(v: dict | None, rel: dict, first: bool) -> list[str]:
    from minitron.fmt import fmt_bytes

    if not v:
        return ["—"] * 4
    g, tp, c = v["greedy"], v.get("throughput") or {}, v["cache"]
    greedy = (f"[green]yes[/green] {g['prompts_equal']}/{g['prompts']}" if g["equal"] else
              f"[red]no[/red] {g['prompts_equal']}/{g['prompts']}")  # fmt: skip
    ours, theirs = c["memory_model_per_sequence"]["total_bytes"], c["vllm_per_sequence"]["total_bytes"]
    return [greedy, _f(tp.get("hf_generate_tokens_per_second"), ",.1f"),
            _f(tp.get("generate_tokens_per_second"), ",.1f") + _rel_ratio(rel.get("vllm_generate_tokens_per_second"), first),
            f"{fmt_bytes(theirs)} ({'=' if c['equal'] else fmt_bytes(ours)})"]  # fmt: skip
