"""`importance.png`: layer importance by layer type, and heat maps of head importance."""

from __future__ import annotations

from pathlib import Path

from minitron.models.layers import ATTENTION, MAMBA, MLP, MOE

COLORS = {MAMBA: "tab:blue", MLP: "tab:orange", ATTENTION: "tab:green", MOE: "tab:purple"}
NAMES = {MAMBA: "Mamba", MLP: "MLP", ATTENTION: "attention", MOE: "MoE"}


def plot_importance(tensors: dict, pattern: str, metric: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = [(n, t, c) for n, t, c in (("attention heads", tensors.get("attention_heads"), ATTENTION),
                                      ("Mamba heads", tensors.get("mamba_heads"), MAMBA)) if t is not None and t.numel()]
    fig, axes = plt.subplots(1 + len(heat), 1, figsize=(10, 3.2 * (1 + len(heat))), squeeze=False)
    ax = axes[0][0]
    layers = tensors["layers"].float()
    for c in sorted(set(pattern)):
        idx = [i for i, p in enumerate(pattern) if p == c]
        ax.bar(idx, layers[idx].tolist(), color=COLORS.get(c, "gray"), label=NAMES.get(c, c))
    ax.set_title(f"layer importance ({metric} when the block is skipped)")
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)
    for (name, t, char), row in zip(heat, axes[1:], strict=True):
        ax = row[0]
        t = t.float()
        # Normalise each layer's row so layers of different scale are comparable.
        t = t / t.amax(dim=1, keepdim=True).clamp_min(1e-12)
        im = ax.imshow(t.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} (each row scaled to its max)")
        ax.set_xlabel("head")
        idx = [i for i, p in enumerate(pattern) if p == char]
        step = max(1, len(idx) // 16)
        ax.set_yticks(range(0, len(idx), step), [str(i) for i in idx[::step]])
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, metadata={"Software": None, "Creation Time": None})
    plt.close(fig)
    return path
