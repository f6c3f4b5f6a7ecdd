"""`score_model()`: the whole of `minitron score` as a library call (validate, load, run, reduce).

Everything a user can get wrong is checked before the model runs: the checkpoint's headers against
its config, the options, the data (tokenised and packed), and - for the layer-streamed path - the
memory the activations will need. Under torchrun each rank takes a contiguous slice of the samples
and the float64 partial sums are summed over the ranks before the scores are finalised.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minitron.data import resolve_seq_len
from minitron.errors import InputError
from minitron.importance.aggregate import Aggregation
from minitron.importance.depth import LAYER_METRICS, LOGIT_METRICS
from minitron.importance.signals import metrics_help, parse_width_metrics
from minitron.options import option

MEMORY_FRACTION = 0.7  # share of the free device memory the in-memory path may use for weights


@dataclass
class ScoreOptions:
    samples: int = option("--samples", default=1024, help="Calibration blocks to score on (the paper: 1024).")
    seq_len: int | None = option("--seq-len", default=None,
                                 help="Tokens per block (default: min(2048, max_position_embeddings)).")
    batch_size: int = option("--batch-size", default=8, help="Blocks per forward pass.")
    layer_metric: str = option("--layer-metric", default="kl",
                               help="Layer importance when a block is skipped: kl, mse, loss or cosine.")
    expert_metric: str = option("--expert-metric", default="reap",
                                help="Routed-expert importance (MoE): reap (router-weighted output norm), frequency "
                                     "or output_norm; the others are saved too.")
    aggregation: str = option("--aggregation", default="mean,l2",
                              help="Reduction over the sequence, then the batch: mean or l2 each.")
    device: str = option("--device", default="auto", help="auto, cpu or cuda[:N].")
    dtype: str = option("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.")
    seed: int = option("--seed", default=0, help="Seed of the sample selection.")
    text_field: str = option("--text-field", default="text", help="Field of .jsonl records / parquet column.")
    streaming: bool | None = option(
        "--streaming/--no-streaming", default=None,
        help="Stream one block at a time from the safetensors files (default: when the weights don't fit in the "
             "device's free memory).")
    compensation: str = option(
        "--compensation", default="auto",
        help="Also record each output projection's input statistics (compensation.safetensors) for `prune "
             "--compensation`: on, off, auto (on when they total at most 1 GiB).")
    # axis -> signal (signals.py); only the axes asked for
    width_metrics: dict = option(
        "--width-metric", default_factory=dict, type=list[str] | None, parse=parse_width_metrics,
        help=f"AXIS=NAME (repeatable, or comma-separated): the signal of a width axis. {metrics_help()}. "
             "See docs/score.md.")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["width_metrics"]:  # the provenance of a default run is unchanged
            del d["width_metrics"]
        return d


@dataclass
class ScoreResult:
    scores: object  # minitron.importance.scores.Scores
    info: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """What `prepare()` checked and decided; `run()` does the work."""

    ckpt: object
    arch: object
    opts: ScoreOptions
    agg: Aggregation
    tokens: object  # [samples, seq_len] LongTensor (all ranks)
    device: str
    dtype: object
    dtype_name: str
    streaming: bool
    data: list = field(default_factory=list)
    grams: bool = False  # collect the compensation statistics (`--compensation`)
    grams_why: str = ""


def prepare(model: str | Path, data, opts: ScoreOptions) -> Prepared:
    """Validate everything and tokenise the data; nothing heavy, nothing written."""
    import torch

    from minitron import distributed
    from minitron.data import load_blocks
    from minitron.device import auto_dtype, resolve_device
    from minitron.dtypes import torch_dtype
    from minitron.models.checkpoint import load_tokenizer, open_checkpoint

    if opts.samples < 1:
        raise InputError(f"must be >= 1, got {opts.samples}", flag="--samples")
    if opts.batch_size < 1:
        raise InputError(f"must be >= 1, got {opts.batch_size}", flag="--batch-size")
    if opts.layer_metric not in LAYER_METRICS:
        raise InputError(f"unknown metric {opts.layer_metric!r} (expected {', '.join(LAYER_METRICS)})",
                         flag="--layer-metric")
    from minitron.importance.experts import EXPERT_METRICS, norm_metric

    if norm_metric(opts.expert_metric) is None:
        raise InputError(f"unknown metric {opts.expert_metric!r} (expected {', '.join(EXPERT_METRICS)})",
                         flag="--expert-metric")
    from minitron.importance.signals import format_metrics, parse_width_metrics

    width_metrics = parse_width_metrics([format_metrics(opts.width_metrics)]) if opts.width_metrics else {}
    opts = ScoreOptions(**{**opts.to_dict(), "expert_metric": norm_metric(opts.expert_metric),
                           "width_metrics": width_metrics})
    agg = Aggregation.parse(opts.aggregation)
    if not data:
        raise InputError("give at least one data file", flag="--data")
    ckpt = open_checkpoint(model, require_weights=True)
    arch = ckpt.arch
    from minitron.prune.compensation import collect

    grams, grams_why = collect(opts.compensation, arch)
    seq_len = resolve_seq_len(opts.seq_len, arch.max_position_embeddings)
    device = distributed.local_device(resolve_device(opts.device))
    dtype_name = auto_dtype(opts.dtype, device)
    dtype = torch_dtype(dtype_name)
    tokenizer = load_tokenizer(ckpt.path)
    tokens = load_blocks(data, tokenizer, seq_len=seq_len, samples=opts.samples, text_field=opts.text_field,
                         seed=opts.seed, max_positions=arch.max_position_embeddings)
    weights = arch.total_params * torch.tensor([], dtype=dtype).element_size()
    free = available_memory(device)
    streaming = opts.streaming if opts.streaming is not None else weights > MEMORY_FRACTION * free
    opts = ScoreOptions(**{**opts.to_dict(), "seq_len": seq_len})
    p = Prepared(ckpt=ckpt, arch=arch, opts=opts, agg=agg, tokens=tokens, device=device, dtype=dtype,
                 dtype_name=dtype_name, streaming=streaming, data=[str(d) for d in data], grams=grams,
                 grams_why=grams_why)
    if streaming:
        _check_streaming_memory(p, free)
    return p


def available_memory(device: str) -> int:
    """Free bytes on the device (system RAM available for the CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def streaming_activation_bytes(arch, n_samples: int, seq_len: int, dtype_bytes: int, layer_metric: str) -> int:
    """Hidden states the layer-major path holds at once: every sample, in the main pass and each branch."""
    copies = 2 + (arch.num_layers if layer_metric in LOGIT_METRICS else 0)  # main in + out, branches
    return n_samples * seq_len * arch.hidden_size * dtype_bytes * copies


def _check_streaming_memory(p: Prepared, free: int) -> None:
    from minitron import distributed
    from minitron.fmt import fmt_bytes

    n = len(distributed.shard_range(p.tokens.shape[0]))
    need = streaming_activation_bytes(p.arch, n, p.opts.seq_len, p.tokens.new_empty(0, dtype=p.dtype).element_size(),
                                      p.opts.layer_metric)
    if need > 0.8 * free:
        hint = " or --layer-metric cosine" if p.opts.layer_metric in LOGIT_METRICS else ""
        raise InputError(
            f"layer-streamed scoring would hold {fmt_bytes(need)} of activations but {fmt_bytes(free)} is free; "
            f"lower --samples or --seq-len{hint}",
            flag="--samples",
        )


def run(p: Prepared, progress=None) -> ScoreResult:
    """Score a prepared model; every rank returns the same (all-reduced) scores."""
    import torch

    from minitron import distributed
    from minitron.importance.engine import InMemorySource
    from minitron.importance.scores import Scores
    from minitron.io import model_fingerprint

    t0 = time.perf_counter()
    torch.manual_seed(p.opts.seed)
    if p.streaming:
        from minitron.models.block_stream import StreamingSource

        source = StreamingSource(p.ckpt.path, device=p.device, dtype=p.dtype, ckpt=p.ckpt)
    else:
        from minitron.models.checkpoint import load_model

        source = InMemorySource(load_model(p.ckpt.path, dtype=p.dtype_name, device=p.device, check=False))
    mine = p.tokens[list(distributed.shard_range(p.tokens.shape[0]))]
    stability: dict = {}
    tensors, n_samples, n_tokens = score_tensors(source, p.arch, mine, agg=p.agg, batch_size=p.opts.batch_size,
                                                 layer_metric=p.opts.layer_metric, progress=progress,
                                                 expert_metric=p.opts.expert_metric, width_metrics=p.opts.width_metrics,
                                                 stability=stability, grams=p.grams)
    scores = Scores(tensors=tensors, metric=p.opts.layer_metric, fingerprint=model_fingerprint(p.ckpt.path),
                    width_metrics=dict(p.opts.width_metrics))
    scores.validate(p.arch)
    info = {
        "family": p.arch.family,
        "samples": int(n_samples),
        "seq_len": p.opts.seq_len,
        "tokens": n_tokens,
        "device": p.device,
        "dtype": p.dtype_name,
        "streaming": p.streaming,
        "world_size": distributed.world_size(),
        "seconds": round(time.perf_counter() - t0, 3),
        "stability": stability,  # split-half Spearman per width axis (minitron.importance.stability)
        "compensation": p.grams_why,
    }
    if p.streaming:
        info["bytes_read"] = source.bytes_read
    return ScoreResult(scores=scores, info=info)


def score_tensors(source, arch, tokens, *, agg: Aggregation, batch_size: int, layer_metric: str,
                  progress=None, expert_metric: str = "reap", width_metrics: dict | None = None,
                  all_metrics: bool = False, stability: dict | None = None,
                  grams: bool = False) -> tuple[dict, int, int]:
    """Run `tokens` (this rank's share) through a source; all-reduce; -> (score tensors, samples, tokens).

    The tensors are those of `scores.safetensors`: the width axes (by `width_metrics`, axis -> signal
    of `signals.py`, defaults for the others), `layers` for `layer_metric` and `layers_<metric>` for
    the other metrics that came for free; for an MoE model `experts` for `expert_metric` and
    `experts_<metric>` for the others. With `all_metrics`, also `candidate.AXIS.NAME` for every
    candidate width signal (one pass for the ablation benchmark). A `stability` dict is filled with
    the split-half rank agreement of each width axis (`minitron.importance.stability`); the scores
    are the same with or without it. With `grams`, also `gram.<component>.<k>` for each output
    projection (`minitron.prune.compensation`; `Scores.save` writes them to their own file).
    """
    import torch

    from minitron.importance.aggregate import Stats
    from minitron.importance.depth import finalize_layer_scores
    from minitron.importance.engine import run_engine, stat_shapes
    from minitron.importance.hooks import WidthCollector

    stats = Stats(split=stability is not None)
    collector = WidthCollector(arch, agg, stats, expert_metric=expert_metric, width_metrics=width_metrics,
                               all_metrics=all_metrics, grams=grams).attach(source.model)
    try:
        run_engine(source, tokens, batch_size=batch_size, layer_metric=layer_metric, stats=stats,
                   collector=collector, progress=progress)
    finally:
        collector.detach()
    stats.all_reduce({**collector.stat_shapes(), **stat_shapes(arch.num_layers, layer_metric)})
    n_samples = float(stats["samples"].item()) if "samples" in stats else 0.0
    n_tok = float(stats["tokens"].item()) if "tokens" in stats else 0.0
    collector.gram_stats.all_reduce(collector.gram_shapes())
    tensors = collector.finalize(n_samples, n_tok)
    if stability is not None:
        stability.update(_split_half(collector, stats))
    layer = finalize_layer_scores(stats, arch.num_layers)
    tensors["layers"] = layer[layer_metric]
    for name, t in layer.items():
        if name != layer_metric:
            tensors[f"layers_{name}"] = t
    tensors.update(collector.finalize_grams())
    bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise RuntimeError(f"non-finite scores in {', '.join(bad)} (try --dtype fp32)")
    n_tokens = int(stats["tokens"].item()) if "tokens" in stats else 0
    return tensors, int(n_samples), n_tokens


def _split_half(collector, stats) -> dict:
    """Each width axis' ranking from the even and from the odd micro-batches, compared (Spearman)."""
    from minitron.importance.stability import split_half

    if "samples" not in stats:
        return {}
    halves = stats.halves()
    if any(float(h["samples"].item()) == 0 for h in halves):
        return {}  # one micro-batch: no second half
    finals = []
    try:
        for h in halves:
            collector.stats = h
            finals.append(collector.finalize(float(h["samples"].item()), float(h["tokens"].item())))
    finally:
        collector.stats = stats
    return split_half(*finals)


def score_model(model: str | Path, data, opts: ScoreOptions | None = None, progress=None) -> ScoreResult:
    """Validate, then score: `Scores` for every width axis and the layers, plus run facts."""
    return run(prepare(model, data, opts or ScoreOptions()), progress=progress)


def write_outputs(out: Path, p: Prepared, result: ScoreResult, *, overwrite: bool) -> dict:
    """The scores directory (scores.safetensors, importance.png, minitron.json), atomically; returns the `--json` document."""
    from minitron.data import data_fingerprints
    from minitron.importance.plot import plot_importance
    from minitron.importance.summary import concentration, least_important_layers
    from minitron.io import atomic_output_dir, write_provenance

    t = result.scores.tensors
    doc = {
        "out": str(out),
        "model": str(p.ckpt.path),
        "model_fingerprint": result.scores.fingerprint,
        "metric": p.opts.layer_metric,
        **({"expert_metric": p.opts.expert_metric} if p.arch.moe_layers() else {}),
        "aggregation": str(p.agg),
        **({"width_metrics": dict(p.opts.width_metrics)} if p.opts.width_metrics else {}),
        **result.info,
        "least_important_layers": least_important_layers(t["layers"], p.arch.pattern),
        "concentration": concentration(t),
        "tensors": {k: list(v.shape) for k, v in sorted(t.items()) if not k.startswith("gram.")},
        "files": ["scores.safetensors", "minitron.json", "importance.png"]
                 + (["compensation.safetensors"] if any(k.startswith("gram.") for k in t) else []),
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        result.scores.save(tmp)
        plot_importance(t, p.arch.pattern, p.opts.layer_metric, tmp / "importance.png", expert_metric=p.opts.expert_metric)
        inputs = {"model": str(p.ckpt.path), "model_fingerprint": result.scores.fingerprint,
                  "data": data_fingerprints(p.data)}
        write_provenance(tmp, "score", p.opts.to_dict(), inputs=inputs, result=doc)
    return doc
