"""How large is the noise in table 1 of `benchmarks/quality.py`? Other random rankings, another data order.

  python benchmarks/quality_noise.py [--quick] [--work DIR]

Same settings as quality.py's full (or quick) mode: (a) the random ranking with seeds 1 and 2,
(b) the three rankings of table 1 distilled with data-order seed 1 instead of 0. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SEQ_LEN, SETTINGS, WIDTH_SHAPE, Bench, fresh_work_dir, log  # noqa: E402
from quality_scores import random_scores, save_scores  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SETTINGS["quick" if args.quick else "full"]
    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-quality-noise-"))
    fresh_work_dir(work)
    from minitron.recipes.score import ScoreOptions, score_model

    b = Bench(cfg, work)
    runs = [("random (seed 1)", random_scores(b.arch, seed=1), 0), ("random (seed 2)", random_scores(b.arch, seed=2), 0)]
    scores = score_model(b.teacher_dir, [str(b.train)], ScoreOptions(
        samples=cfg["score_samples"], seq_len=SEQ_LEN, batch_size=8, layer_metric="kl", device="cpu",
        dtype="fp32", streaming=False)).scores
    from quality_scores import load_state_dict, magnitude_scores

    from minitron.models.checkpoint import open_checkpoint

    mag = magnitude_scores(load_state_dict(b.teacher_dir), open_checkpoint(b.teacher_dir).arch)
    runs += [("minitron (activations), data-order seed 1", dict(scores.tensors), 1),
             ("weight magnitude, data-order seed 1", mag, 1),
             ("random (seed 0), data-order seed 1", random_scores(b.arch, seed=0), 1)]
    rows = ["| ranking | loss after prune | KL after prune | loss after distill | KL after distill |",
            "|---|---|---|---|---|"]
    for i, (name, tensors, seed) in enumerate(runs):
        d = work / f"noise{i}"
        save_scores(tensors, d / "scores", model_dir=b.teacher_dir)
        b.prune(d / "scores", d / "pruned", shape=WIDTH_SHAPE)
        ds = b.distill(d / "pruned", d / "distilled", cfg["steps"], seed=seed)
        rows.append(f"| {name} | {ds['before']['loss']:.3f} | {ds['before']['kl']:.3f} | {ds['after']['loss']:.3f} "
                    f"| {ds['after']['kl']:.3f} |")
        log(rows[-1])
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
