"""The comparison table: one row per model, the first as the reference, with relative columns.

`relative(rows)` is pure (dicts in, dicts out): ratios for sizes and speeds (0.72x params,
1.31x decode tokens/s), differences for quantities in nats or accuracy points (+0.08 nats loss,
-0.02 acc). `minitron.cli.eval_table.render(doc)` prints it with rich.
"""

from __future__ import annotations

RATIO_KEYS = ("params", "perplexity")
DIFF_KEYS = ("loss", "kl")
SPEED_KEYS = ("prefill_tokens_per_second", "decode_tokens_per_second")


def _ratio(x, ref):
    return x / ref if isinstance(x, (int, float)) and isinstance(ref, (int, float)) and ref else None


def _diff(x, ref):
    return x - ref if isinstance(x, (int, float)) and isinstance(ref, (int, float)) else None


def relative(rows: list[dict]) -> list[dict]:
    """For each row, `{"params": ratio, "loss": diff, ..., "tasks": {task: {metric: diff}}}` vs rows[0]."""
    if not rows:
        return []
    ref = rows[0]
    out = []
    for row in rows:
        rel = {k: _ratio(row.get(k), ref.get(k)) for k in RATIO_KEYS}
        rel |= {k: _diff(row.get(k), ref.get(k)) for k in DIFF_KEYS}
        tp, ref_tp = row.get("throughput") or {}, ref.get("throughput") or {}
        rel |= {k: _ratio(tp.get(k), ref_tp.get(k)) for k in SPEED_KEYS}
        mem, ref_mem = row.get("memory") or {}, ref.get("memory") or {}
        rel["memory"] = _ratio(mem.get("total_bytes"), ref_mem.get("total_bytes"))
        fit, ref_fit = row.get("fit") or {}, ref.get("fit") or {}
        rel["max_sequences"] = _ratio(fit.get("max_sequences"), ref_fit.get("max_sequences"))
        vt = ((row.get("vllm") or {}).get("throughput") or {}).get("generate_tokens_per_second")
        ref_vt = ((ref.get("vllm") or {}).get("throughput") or {}).get("generate_tokens_per_second")
        rel["vllm_generate_tokens_per_second"] = _ratio(vt, ref_vt)
        tasks, ref_tasks = row.get("tasks") or {}, ref.get("tasks") or {}
        rel["tasks"] = {
            t: {
                m: _diff(v, ref_tasks.get(t, {}).get(m))
                for m, v in metrics.items()
                if not m.endswith("_stderr") and m != "samples"
            }
            for t, metrics in tasks.items()
        }
        out.append(rel)
    return out
