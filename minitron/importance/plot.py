"""`importance.png`: every score `minitron score` writes, drawn so that what a user would cut is readable.

- Layer importance on a log scale (a few very important layers no longer flatten the rest), by
  layer type, the least important layers labelled with their index.
- Hidden channels: every channel's score, sorted, on a log scale (how much a cut of N channels loses).
- FFN neurons, Mamba head-dim channels: per layer, the scores sorted, as a heat map on a log scale.
- Attention, KV and Mamba heads: heat maps, each layer's row scaled to its maximum.
- MoE (when the model has MoE layers): routed experts as a heat map by expert index, each layer's
  row scaled to its maximum (the experts `prune --experts` drops are the dark cells); each expert's
  neurons (one row per layer and expert) and the shared expert's, sorted, on a log scale.
"""

from __future__ import annotations

from pathlib import Path

from minitron.models.layer_types import ATTENTION, MAMBA, MLP, MOE

COLORS = {MAMBA: "tab:blue", MLP: "tab:orange", ATTENTION: "tab:green", MOE: "tab:purple"}
NAMES = {MAMBA: "Mamba", MLP: "MLP", ATTENTION: "attention", MOE: "MoE"}
LABELLED = 6  # least important layers named on the plot

# (score tensor, title, layer type of its rows or None, how it is drawn)
PANELS = (
    ("hidden", "hidden channels, sorted (log)", None, "profile"),
    ("ffn", "FFN neurons per MLP layer, sorted (log)", MLP, "sorted"),
    ("attention_heads", "attention heads (each row scaled to its max)", ATTENTION, "heads"),
    ("kv_heads", "KV heads (each row scaled to its max)", ATTENTION, "heads"),
    ("mamba_heads", "Mamba heads (each row scaled to its max)", MAMBA, "heads"),
    ("mamba_head_dim", "Mamba head-dim channels per layer, sorted (log)", MAMBA, "sorted"),
    ("experts", "routed experts per MoE layer ({expert_metric}; each row scaled to its max)", MOE, "experts"),
    ("moe_ffn", "routed-expert neurons, one row per MoE layer and expert, sorted (log)", MOE, "sorted"),
    ("shared_expert_ffn", "shared-expert neurons per MoE layer, sorted (log)", MOE, "sorted"),
)


def _positive(t, floor: float = 1e-12):
    return t.float().clamp_min(floor)


def panels(tensors: dict) -> list[tuple]:
    """The width panels drawn for these scores: one per score tensor that has units."""
    return [(k, title, c, kind) for k, title, c, kind in PANELS if tensors.get(k) is not None and tensors[k].numel()]


def plot_importance(tensors: dict, pattern: str, metric: str, path: str | Path,
                    expert_metric: str = "reap") -> list[str]:
    """Draw `importance.png`; returns the panel titles (the layer panel first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels_ = panels(tensors)
    fig, axes = plt.subplots(1 + len(panels_), 1, figsize=(11, 3.0 * (1 + len(panels_))), squeeze=False)
    _layers(axes[0][0], tensors["layers"], pattern, metric)
    for (key, title, char, kind), row in zip(panels_, axes[1:], strict=True):
        ax, t = row[0], tensors[key].float()
        if kind == "profile":
            ax.semilogy(_positive(t.sort(descending=True).values).numpy())
            ax.set_xlabel("channel rank (most important first)")
        else:
            if t.dim() == 1:
                t = t.unsqueeze(0)
            t = t.reshape(-1, t.shape[-1])  # moe_ffn [layers, experts, f] -> [layers x experts, f]
            if kind == "sorted":
                t = _positive(t.sort(dim=1, descending=True).values).log10()
                xlabel = "unit rank within the layer (log10 score)"
            else:
                t = t / t.amax(dim=1, keepdim=True).clamp_min(1e-12)
                xlabel = "expert" if kind == "experts" else "head"
            im = ax.imshow(t.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(xlabel)
            idx = [i for i, p in enumerate(pattern) if p == char] if char else list(range(t.shape[0]))
            ylabel = "layer"
            if len(idx) == t.shape[0]:
                step = max(1, len(idx) // 16)
                ax.set_yticks(range(0, len(idx), step), [str(i) for i in idx[::step]])
            elif idx and t.shape[0] % len(idx) == 0:  # moe_ffn: one row per (layer, expert)
                per = t.shape[0] // len(idx)
                ax.set_yticks(range(0, t.shape[0], per), [str(i) for i in idx])
                ylabel = f"layer ({per} experts each)"
            ax.set_ylabel(ylabel)
            fig.colorbar(im, ax=ax)
        ax.set_title(title.format(expert_metric=expert_metric))
    fig.tight_layout()
    titles = [ax.get_title() for row in axes for ax in row]
    fig.savefig(Path(path), dpi=90, metadata={"Software": None, "Creation Time": None})
    plt.close(fig)
    return titles


def _layers(ax, layers, pattern: str, metric: str) -> None:
    values = _positive(layers)
    for c in sorted(set(pattern)):
        idx = [i for i, p in enumerate(pattern) if p == c]
        ax.bar(idx, values[idx].tolist(), color=COLORS.get(c, "gray"), label=NAMES.get(c, c))
    ax.set_yscale("log")
    for i in values.argsort()[:LABELLED].tolist():  # the layers a user would drop first
        ax.annotate(str(i), (i, float(values[i])), ha="center", va="bottom", fontsize=7)
    ax.set_title(f"layer importance ({metric} when the block is skipped; log scale; least important labelled)")
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)
