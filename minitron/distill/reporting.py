"""Logging beside `metrics.jsonl`: TensorBoard scalars (`--report-to tensorboard`) and a summary plot.

TensorBoard events go to `<out>.partial/tensorboard/` while the run goes (`tensorboard --logdir` it)
and are copied into `--out/tensorboard/` at the end: `train/loss`, `train/kd`, `train/kl`,
`train/lm_loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_second` per step, `eval/kl` and
`eval/loss` per evaluation, all against the optimiser step. A resumed run appends a new event file
(steps logged after the last checkpoint by a killed run appear twice; metrics.jsonl is the record).

`summary_plot` draws the training loss and the validation KL against tokens from a metrics.jsonl
(matplotlib, no display needed) — saved as `distill_summary.png` beside the result.
"""

from __future__ import annotations

import json
from pathlib import Path

REPORT_TO = ("none", "tensorboard")
TRAIN_KEYS = ("loss", "kd", "kl", "lm_loss", "lr", "grad_norm", "tokens_per_second")


def check_report_to(value: str) -> str:
    from minitron.errors import InputError

    if value not in REPORT_TO:
        raise InputError(f"must be one of {', '.join(REPORT_TO)}, got {value!r}", flag="--report-to")
    if value == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise InputError("needs the tensorboard package (pip install tensorboard)", flag="--report-to") from None
    return value


class TensorBoard:
    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def step(self, m: dict) -> None:
        for k in TRAIN_KEYS:
            if isinstance(m.get(k), (int, float)):
                self.writer.add_scalar(f"train/{k}", m[k], m["step"])

    def eval(self, rec: dict) -> None:
        for k in ("kl", "loss"):
            if isinstance(rec["eval"].get(k), (int, float)):
                self.writer.add_scalar(f"eval/{k}", rec["eval"][k], rec["step"])

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def summary_plot(metrics: Path, png: Path, title: str = "distill") -> bool:
    """Training loss and val KL vs tokens from `metrics` into `png`; False when there is nothing to draw."""
    rows = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x.strip()] if Path(metrics).is_file() else []
    train = [(r["tokens"], r["loss"]) for r in rows if "eval" not in r and r.get("loss") is not None]
    evals = [(r["tokens"], r["eval"]["kl"]) for r in rows if "eval" in r and r["eval"].get("kl") is not None]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", lw=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="val KL(teacher || student)", lw=1.5)
    ax.set_xlabel("tokens")
    ax.set_ylabel("nats / token")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True
