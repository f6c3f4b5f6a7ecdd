"""`prune()`: the whole command as a library call — validate, plan or search, then write.

Everything a user can get wrong is checked before any model is loaded or anything is written:
the target kind, the shape against the model, the scores against the model (shapes and
fingerprint), the output directory, the search space. The result is the `prune --json` document.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

from minitron.data import resolve_seq_len
from minitron.errors import InputError
from minitron.memory import (
    GPU_PRESETS,
    Budget,
    Serving,
    make_budget,
    max_sequences,
    parse_size,
    resolve_context,
)
from minitron.models.checkpoint import Checkpoint, copy_side_files, open_checkpoint
from minitron.options import group, option, shared
from minitron.prune.compensation import resolve as resolve_compensation
from minitron.prune.rotation import resolve as resolve_rotation
from minitron.prune.search import (
    AXES,
    default_space,
    enumerate_candidates,
    parse_params,
    rank_by_params,
    require_feasible,
)
from minitron.prune.select import Shape, least_important, plan_for
from minitron.prune.shard_writer import DEFAULT_SHARD_BYTES
from minitron.prune.shortlist import DEFAULT_BAND, DEFAULT_DISTILL_CANDIDATES
from minitron.prune.target import Target, parse_target


@dataclass
class PruneOptions:
    model: Path
    out: Path | None = option("--out", "-o", default=None, help="Output model directory.")
    scores: Path | None = option("--scores", default=None, help="Scores directory written by `minitron score`.")
    shape: Shape = group(Shape)  # --hidden-size ... --experts-per-token (the axis registry's flags)
    hidden_basis: str = option("--hidden-basis", default="auto",
                               help="Hidden cut: pca (rotate the residual stream, keep its principal components), "
                                    "channels (keep the top channels), auto (pca where the family and scores allow).")
    compensation: str = option("--compensation", default="auto",
                               help="Refit the output projections whose input is cut (least squares on the scores' "
                                    "statistics): on, off, auto (on where the scores carry them).")
    num_layers: int | None = option("--num-layers", default=None,
                                    help="Exact depth: drop the least important layers (layer scores).")
    drop_layers: str | None = option("--drop-layers", default=None, help="Exact depth: 0-based layers to drop, e.g. 7,8,17.")
    iterative: bool = option("--iterative", default=False,
                             help="With --num-layers: re-score layers after each removal (needs --data).")
    keep_layer_types: str | None = option("--keep-layer-types", default=None,
                                          help="Minimum layers kept per type, e.g. attention=4,mamba=20.")
    target_params: int | None = option("--target-params", default=None, type=str | None, parse=parse_params,
                                       help="Search under a parameter count: 9B, 8.9e9, 8888227328.")
    target_active_params: int | None = option(
        "--target-active-params", default=None, type=str | None,
        parse=functools.partial(parse_params, flag="--target-active-params"),
        help="Search under active parameters per token (MoE), e.g. 3B; combinable with the other targets.")
    memory_budget: str | None = option("--memory-budget", default=None, help="Search under a memory budget, e.g. 19.66GiB.")
    gpu: str | None = option("--gpu", default=None, help=f"Search under a GPU's memory: {', '.join(GPU_PRESETS)}.")
    headroom: float | None = shared("headroom", default=None)
    reserve_gib: float | None = shared("reserve_gib", default=None)
    budget: Budget | None = None  # from --gpu / --memory-budget / --headroom / --reserve-gib unless given
    engine: str = shared("engine", default="vllm")  # memory model: whose serving terms count
    kv_dtype: str | None = shared("kv_dtype", default=None)
    prefill_chunk: int | None = shared("prefill_chunk", default=None)
    tensor_parallel: int = shared("tensor_parallel", default=1)  # widths vLLM can shard; memory per GPU
    context_length: int | None = shared("context_length", default=None)  # None: the model's max_position_embeddings
    batch_size: int = shared("sequences", default=1)  # sequences held at once (--sequences)
    dtype: str = shared("memory_dtype", default="bf16")
    state_dtype: str | None = shared("state_dtype", default=None)
    search: list[str] = option("--search", default_factory=list, help="Search range AXIS=MIN:MAX[:STEP] (repeatable).")
    drop_order: str | None = option("--drop-order", default=None, help="Order in which layers go when depth is searched.")
    data: list[Path] = option("--data", default_factory=list,
                              help="Calibration text to rank candidates by a zero-shot proxy.")
    seq_len: int | None = shared("seq_len", default=None)  # None: min(2048, max_position_embeddings)
    proxy_samples: int = option("--proxy-samples", default=8, help="Held-back blocks for the proxy.")
    proxy: str = option("--proxy", default="kl", help="Zero-shot proxy: kl (to the original) or loss (LM loss).")
    shortlist: int = option("--shortlist", default=8, help="Candidates shortlisted from the band, spread across the "
                                                          "axes; the proxy ranks them all.")
    band: float | None = option("--band", default=None,  # None: shortlist.DEFAULT_BAND (searches only)
                                help=f"Shortlist from candidates within this fraction of the largest feasible budget "
                                     f"use (default {DEFAULT_BAND:g}).")
    candidate_distill_steps: int = option(
        "--candidate-distill-steps", default=0,
        help="Short distillation of the proxy's best --distill-candidates before the final ranking (needs --data).")
    distill_candidates: int = option("--distill-candidates", default=DEFAULT_DISTILL_CANDIDATES,
                                     help="How many of the proxy's best --candidate-distill-steps distils.")
    distill_samples: int = option("--distill-samples", default=32, help="Training blocks for --candidate-distill-steps.")
    lr: float = option("--lr", default=1e-4, help="Learning rate of the short distillation.")
    top_k: int = option("--candidates", default=10,  # candidates shown
                        help="Candidates shown (and distilled); 0 lists every feasible one.")
    dry_run: bool = option("--dry-run", default=False, help="Show the plan or the candidate table; write nothing.")
    max_shard_bytes: int = option("--max-shard-size", default=DEFAULT_SHARD_BYTES, type=str, cli_default="5GB",
                                  parse=functools.partial(parse_size, flag="--max-shard-size"), help="Largest output shard.")
    seed: int = option("--seed", default=0, help="Seed for the calibration sample.")
    device: str = option("--device", default="auto",  # for the in-memory work (proxy, short distillation, --iterative)
                         help="auto, cpu or cuda[:N], for the proxy, distillation and --iterative.")
    overwrite: bool = option("--overwrite", default=False, help="Replace an existing output directory.")

    def __post_init__(self):
        if self.budget is None:
            self.budget = make_budget(gpu=self.gpu, memory_budget=self.memory_budget, headroom=self.headroom,
                                      reserve_gib=self.reserve_gib, engine=self.engine)


def _check_ranking(o: PruneOptions) -> None:
    if o.proxy not in ("kl", "loss"):
        raise InputError(f"expected kl or loss, got {o.proxy!r}", flag="--proxy")
    if o.top_k < 0 or o.shortlist < 0 or o.candidate_distill_steps < 0:
        flag = "--candidates" if o.top_k < 0 else "--shortlist" if o.shortlist < 0 else "--candidate-distill-steps"
        raise InputError("must be >= 0", flag=flag)
    _check_shortlist(o)


def _check_shortlist(o: PruneOptions) -> None:
    """The shortlist's options (`minitron.prune.shortlist`): ranges, and only where a search runs."""
    from minitron.prune.shortlist import check_band

    if o.band is not None:
        if o.target_params is None and o.target_active_params is None and o.budget is None:
            raise InputError("only used with --target-params, --target-active-params or a memory budget", flag="--band")
        check_band(o.band)
    if o.distill_candidates < 1:
        raise InputError(f"must be >= 1, got {o.distill_candidates}", flag="--distill-candidates")
    if o.candidate_distill_steps and not o.data:
        raise InputError("ranking candidates by a short distillation needs calibration text (--data)",
                         flag="--candidate-distill-steps")


def serving(o: PruneOptions, arch) -> Serving:
    """The serving settings of the memory figures (the context resolved against the model)."""
    return Serving(context_length=resolve_context(arch, o.context_length), batch_size=o.batch_size, dtype=o.dtype,
                   state_dtype=o.state_dtype, engine=o.engine, kv_dtype=o.kv_dtype, prefill_chunk=o.prefill_chunk,
                   tensor_parallel=o.tensor_parallel)


def target_of(o: PruneOptions, arch) -> Target:
    """The options' `Target` on `arch` (every target flag validated here, once)."""
    return parse_target(arch, serving=serving(o, arch), shape=o.shape, num_layers=o.num_layers,
                        drop_layers=o.drop_layers, iterative=o.iterative, keep_layer_types=o.keep_layer_types,
                        target_params=o.target_params, target_active_params=o.target_active_params, budget=o.budget,
                        search=o.search, drop_order=o.drop_order)


def _load_scores(o: PruneOptions, ckpt: Checkpoint):
    if o.scores is None:
        return None
    from minitron.importance.scores import Scores
    from minitron.io import model_fingerprint

    scores = Scores.load(o.scores)
    scores.validate(ckpt.arch)
    if ckpt.has_weights and scores.fingerprint:
        fp = model_fingerprint(ckpt.path)
        if fp != scores.fingerprint:
            raise InputError(f"these scores were computed on another model (fingerprint {scores.fingerprint}, "
                             f"this model {fp})", flag="--scores")
    return scores


def prune(o: PruneOptions, *, progress=None, log=lambda msg: None) -> dict:
    """Run `minitron prune`. `progress(description, done, total)` reports long loops."""
    _check_ranking(o)
    ckpt = open_checkpoint(o.model, fetch_weights=not o.dry_run)
    arch = ckpt.arch
    o.context_length = resolve_context(arch, o.context_length)
    o.seq_len = resolve_seq_len(o.seq_len, arch.max_position_embeddings)
    target = target_of(o, arch)
    if not o.dry_run:
        if o.out is None:
            raise InputError("an output directory is needed (or use --dry-run)", flag="--out")
        if not ckpt.has_weights:
            raise InputError(f"{ckpt.path} has no weights; only --dry-run works on a bare config", flag="--dry-run")
        from minitron.io import check_output_dir

        check_output_dir(o.out, overwrite=o.overwrite, inputs=[ckpt.path])
    if o.data or o.iterative:
        from minitron.device import resolve_device

        resolve_device(o.device)
    scores = _load_scores(o, ckpt)
    if not o.dry_run and scores is None:
        raise InputError("writing a pruned model needs importance scores (run `minitron score` first)",
                         flag="--scores")
    doc: dict = {"model": str(ckpt.path), "family": arch.family, "dry_run": o.dry_run,
                 "scores": str(o.scores) if o.scores else None, "target": target.record(o.shape, o.drop_layers)}
    rotation, doc["hidden_basis"] = resolve_rotation(o.hidden_basis, arch, scores,
                                                     None if target.searching else target.shape.hidden_size)
    compensation, doc["compensation"] = resolve_compensation(o.compensation, arch, scores)
    method = {"rotation": rotation, "compensation": compensation}

    if target.searching:
        plan, cands = _search(o, target, ckpt, scores, doc, progress, log, method)
    else:
        plan, cands = _exact(o, target, ckpt, scores, log, method), None
    if plan.rotation is not None:
        doc["hidden_basis"] = {"chosen": doc["hidden_basis"], **plan.rotation.record()}
    if plan.compensation is not None:
        doc["compensation"] = {"chosen": doc["compensation"], **plan.compensation.record(plan)}

    pruned = plan.target()
    before, after = target.serving.estimate(arch), target.serving.estimate(pruned)
    doc.update(
        params_before=arch.total_params,
        params_after=pruned.total_params,
        active_params_before=arch.total_active_params,
        active_params_after=pruned.total_active_params,
        memory=after.to_dict(),
        memory_before=before.to_dict(),
        plan=plan.summary(),
    )
    if o.budget is not None:
        doc["budget"] = o.budget.to_dict(after) | {"max_sequences_before": max_sequences(before, o.budget.budget_bytes)}
    if o.target_params is not None:
        doc["target_params"] = o.target_params
    if o.target_active_params is not None:
        doc["target_active_params"] = o.target_active_params
    if cands is not None:
        doc["candidates"] = cands
    if o.dry_run:
        doc["config"] = pruned.to_config()  # the config.json the pruned model would have
        return doc
    doc["out"] = str(o.out)
    _write(o, ckpt, plan, doc, progress)
    return doc


def _exact(o: PruneOptions, target: Target, ckpt: Checkpoint, scores, log, method=None):
    arch = ckpt.arch
    dropped: list[int] = list(target.drop_layers or ())
    k = arch.num_layers - target.num_layers if target.num_layers is not None else 0
    if k and target.iterative:
        dropped = _iterative_drop(o, ckpt, k, target.keep_min, log)
    elif k:
        if scores is None:
            raise InputError("choosing layers needs the layer scores of --scores (or give --drop-layers)",
                             flag="--num-layers")
        order = least_important(scores["layers"], arch, target.keep_min)
        if len(order) < k:
            raise InputError(f"--keep-layer-types leaves only {len(order)} droppable layers", flag="--num-layers")
        dropped = order[:k]
    return plan_for(arch, target.shape, scores, dropped, **(method or {}))


def _iterative_drop(o: PruneOptions, ckpt: Checkpoint, k: int, keep_min, log) -> list[int]:
    """Drop one layer at a time, re-scoring the remaining layers with the others already skipped."""
    try:
        from minitron.importance.engine import layer_scores
    except ImportError:
        raise InputError("--iterative needs minitron.importance.depth (not available in this build)",
                         flag="--iterative") from None
    from minitron.prune.select import drop_sequence

    if not ckpt.has_weights:
        raise InputError("re-scoring layers needs weights", flag="--iterative")
    model, blocks, _ = _model_and_blocks(o, ckpt, n_eval=o.proxy_samples, n_train=0)
    dropped: list[int] = []
    for step in range(k):
        s = layer_scores(model, blocks, metric="kl", skip=frozenset(dropped))
        order = sorted((i for i in range(ckpt.arch.num_layers) if i not in dropped), key=lambda i: (float(s[i]), i))
        # keep_min counts are over the original pattern minus the dropped layers
        allowed = drop_sequence(ckpt.arch, [*dropped, *order], keep_min)[len(dropped):]
        if not allowed:
            raise InputError(f"--keep-layer-types leaves only {len(dropped)} droppable layers", flag="--num-layers")
        dropped.append(allowed[0])
        log(f"iterative depth: drop layer {allowed[0]} ({step + 1}/{k})")
    return dropped


def _model_and_blocks(o: PruneOptions, ckpt: Checkpoint, *, n_eval: int, n_train: int):
    from minitron.data import load_blocks
    from minitron.device import resolve_device
    from minitron.models.checkpoint import load_model, load_tokenizer

    if not o.data:
        raise InputError("calibration text is needed to rank candidates in memory", flag="--data")
    tok = load_tokenizer(ckpt.path)
    blocks = load_blocks(o.data, tok, seq_len=o.seq_len, samples=n_eval + n_train, seed=o.seed,
                         max_positions=ckpt.arch.max_position_embeddings)
    device = resolve_device(o.device)
    # fp32 on CPU (bf16 matmuls are slow there), bf16 on a GPU (a 12B original and a candidate fit in 80 GB).
    model = load_model(ckpt.path, dtype="fp32" if device == "cpu" else "bf16", device=device)
    blocks = blocks.to(device)
    # Held-back evaluation blocks are the last ones; distillation trains on the others.
    return model, blocks[n_train:], blocks[:n_train]


def _search(o: PruneOptions, target: Target, ckpt: Checkpoint, scores, doc, progress, log, method=None):
    arch = ckpt.arch
    order = None
    if target.drop_order is not None:
        order = list(target.drop_order)
    elif scores is not None:
        order = least_important(scores["layers"], arch, target.keep_min)
    space = default_space(arch, depth=order is not None, tensor_parallel=target.serving.tensor_parallel)
    asked = target.search
    if order is None and "num_layers" in asked and asked["num_layers"].lo < arch.num_layers:
        raise InputError("searching depth needs a drop order: --drop-order or the layer scores of --scores",
                         flag="--search")
    space.update(asked)
    doc["search_space"] = {a: [space[a].lo, space[a].hi, space[a].step] for a in AXES}
    cands = enumerate_candidates(arch, space, drop_order=order, keep_min=target.keep_min, target=target)
    if o.tensor_parallel > 1 and not cands:
        raise InputError(f"no shape of the search space can be sharded over {o.tensor_parallel} GPUs "
                         "(widen --search to multiples of it)", flag="--tensor-parallel")
    require_feasible(cands, target)
    feasible = rank_by_params(cands)
    doc["n_candidates"], doc["n_feasible"] = len(cands), len(feasible)
    rows, info = _shortlist_and_rank(o, target, ckpt, scores, feasible, progress, log, method)
    doc["ranking"], doc["shortlist"], doc["winner_reason"] = info["ranking"], info["shortlist"], info["reason"]
    best = rows[0]["_c"]
    for rank, d in enumerate(rows, 1):
        d["rank"] = rank
    shown = rows if o.top_k == 0 else rows[: o.top_k]
    cands_out = [{k: v for k, v in d.items() if k != "_c"} for d in shown]
    return plan_for(arch, best.shape().resolve(arch), scores, best.dropped_layers, **(method or {})), cands_out


def _shortlist_and_rank(o: PruneOptions, target: Target, ckpt: Checkpoint, scores, feasible, progress, log,
                        method=None):
    """Rows of every feasible candidate, the ranked shortlist first (winner on top), then the others
    largest first; and what the JSON document says of the ranking (`minitron.prune.shortlist`)."""
    from minitron.prune import shortlist as sl

    limits = sl.limits_of(target)
    short = sl.take(feasible, n=o.shortlist, band=DEFAULT_BAND if o.band is None else o.band, limits=limits)
    picked = {id(c) for c in short.members}

    def row(c, shortlisted):
        return c.to_dict() | {"budget_use": round(sl.budget_use(c, limits), 6), "shortlisted": shortlisted, "_c": c}

    top = [row(c, True) for c in short.members]
    rest = [row(c, False) for c in feasible if id(c) not in picked]
    info = {"shortlist": short.to_dict(), "ranking": "params"}
    key, distilled = None, 0
    if scores is not None and ckpt.has_weights and o.data and top:
        key, distilled = _rank_with_model(o, ckpt, scores, top, progress, log, method)
        info["ranking"] = f"{key} after {o.candidate_distill_steps} steps" if distilled else key
        info["shortlist"] |= {"proxy": f"proxy_{o.proxy}", "distilled": distilled,
                              "distill_steps": o.candidate_distill_steps}
    elif scores is not None and ckpt.has_weights:
        log("ranking candidates by parameters (give --data to rank the shortlist by a zero-shot proxy)")
    rows = top + rest
    info["reason"] = sl.reason(rows, key=key, shortlist=len(top), distilled=distilled, steps=o.candidate_distill_steps)
    return rows, info


def _rank_with_model(o: PruneOptions, ckpt: Checkpoint, scores, short: list[dict], progress, log, method=None):
    """Rank `short` in place by the zero-shot proxy (all of it), then the best `--distill-candidates` by the
    same figure after `--candidate-distill-steps` of distillation. Returns (the field ranked by, how many
    were distilled)."""
    from minitron.recipes.candidates import distill_scores, proxy_scores

    n_train = o.distill_samples if o.candidate_distill_steps else 0
    model, eval_blocks, train_blocks = _model_and_blocks(o, ckpt, n_eval=o.proxy_samples, n_train=n_train)
    log(f"zero-shot proxy on all {len(short)} shortlisted candidates ({len(eval_blocks)} held-back blocks)")
    figs = proxy_scores(model, ckpt.arch, [d["_c"] for d in short], scores, eval_blocks,
                        progress=progress, method=method)
    for d, f in zip(short, figs, strict=True):
        d.update(f)
    key = f"proxy_{o.proxy}"
    short.sort(key=lambda d: d[key])
    if not o.candidate_distill_steps:
        return key, 0
    k = min(o.distill_candidates, len(short))
    log(f"short distillation ({o.candidate_distill_steps} steps) of the {k} best by the proxy")
    figs = distill_scores(model, ckpt.arch, [d["_c"] for d in short[:k]], scores, train_blocks, eval_blocks,
                          steps=o.candidate_distill_steps, lr=o.lr, device=str(model.device),
                          progress=progress, method=method)
    for d, f in zip(short[:k], figs, strict=True):
        d.update(f)
    key = f"distill_{o.proxy}"
    short[:k] = sorted(short[:k], key=lambda d: d[key])
    return key, k


def _write(o: PruneOptions, ckpt: Checkpoint, plan, doc: dict, progress) -> None:
    import json

    from minitron import card
    from minitron.io import atomic_output_dir, model_fingerprint, write_provenance
    from minitron.prune.shard_writer import prune_checkpoint

    pruned = plan.target()
    with atomic_output_dir(o.out, overwrite=o.overwrite) as tmp:
        files = prune_checkpoint(ckpt, plan, tmp, max_shard_bytes=o.max_shard_bytes, progress=progress)
        cfg = pruned.to_config()
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        copy_side_files(ckpt.path, tmp)
        doc["files"] = files
        inputs = {"model": str(ckpt.path.resolve()), "model_fingerprint": model_fingerprint(ckpt.path),
                  "scores": _scores_provenance(o.scores)}
        options = {k: v for k, v in vars(o).items() if k not in ("budget", "shape")}
        options["shape"] = asdict(o.shape)
        card.write(tmp, card.for_pruned(o.model, o.out, ckpt, doc))
        write_provenance(tmp, "prune", options, inputs=inputs,
                         result={**{k: v for k, v in doc.items() if k != "candidates"},
                                 "candidates": doc.get("candidates", [])[:50], "indices": plan.indices()})


def _scores_provenance(scores: Path | None) -> dict | None:
    """The scores directory by content: its resolved path and the sha256 of every file in it."""
    if scores is None:
        return None
    from minitron.io import file_sha256

    root = Path(scores).resolve()
    return {"path": str(root), "sha256": {f.name: file_sha256(f) for f in sorted(root.iterdir()) if f.is_file()}}

