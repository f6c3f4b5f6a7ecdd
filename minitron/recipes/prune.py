"""`prune()`: the whole command as a library call — validate, plan or search, then write.

Everything a user can get wrong is checked before any model is loaded or anything is written:
the target kind, the shape against the model, the scores against the model (shapes and
fingerprint), the output directory, the search space. The result is the `prune --json` document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from minitron.data import resolve_seq_len
from minitron.errors import InputError
from minitron.memory import Budget, estimate, max_sequences, resolve_context
from minitron.models.checkpoint import Checkpoint, copy_side_files, open_checkpoint
from minitron.prune.search import (
    AXES,
    default_space,
    enumerate_candidates,
    parse_search,
    rank_by_params,
    require_feasible,
)
from minitron.prune.select import (
    Shape,
    check_drop,
    least_important,
    make_plan,
    parse_keep_types,
    parse_layer_list,
    shape_arch,
    validate_shape,
)
from minitron.prune.shard_writer import DEFAULT_SHARD_BYTES
from minitron.prune.shortlist import DEFAULT_BAND, DEFAULT_DISTILL_CANDIDATES
from minitron.tensor_parallel import impossible as tp_impossible
from minitron.tensor_parallel import problems as tp_problems


@dataclass
class PruneOptions:
    model: Path
    out: Path | None = None
    scores: Path | None = None
    shape: Shape = field(default_factory=Shape)
    num_layers: int | None = None
    drop_layers: str | None = None
    iterative: bool = False
    keep_layer_types: str | None = None
    target_params: int | None = None
    target_active_params: int | None = None
    budget: Budget | None = None
    context_length: int | None = None  # None: the model's max_position_embeddings
    batch_size: int = 1  # sequences held at once (--sequences)
    dtype: str = "bf16"
    state_dtype: str | None = None
    engine: str = "vllm"  # memory model: whose serving terms count (--engine)
    kv_dtype: str | None = None
    prefill_chunk: int | None = None
    tensor_parallel: int = 1  # widths vLLM can shard over this many GPUs; memory per GPU
    search: list[str] = field(default_factory=list)
    drop_order: str | None = None
    data: list[Path] = field(default_factory=list)
    seq_len: int | None = None  # None: min(2048, max_position_embeddings)
    proxy_samples: int = 8
    proxy: str = "kl"
    shortlist: int = 8
    band: float | None = None  # None: shortlist.DEFAULT_BAND (searches only: --band)
    candidate_distill_steps: int = 0
    distill_candidates: int = DEFAULT_DISTILL_CANDIDATES  # the proxy's best, distilled (--distill-candidates)
    distill_samples: int = 32
    lr: float = 1e-4
    top_k: int = 10  # candidates shown (and distilled): --candidates
    dry_run: bool = False
    overwrite: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    seed: int = 0
    device: str = "auto"  # for the in-memory work (proxy, short distillation, --iterative)

    @property
    def searching(self) -> bool:
        return self.target_params is not None or self.target_active_params is not None or self.budget is not None


def _validate_kind(o: PruneOptions) -> None:
    exact = not o.shape.is_empty() or o.num_layers is not None or o.drop_layers is not None
    if exact and o.searching:
        from minitron.prune.select import SHAPE_FLAGS

        given = [SHAPE_FLAGS[k] for k, v in asdict(o.shape).items() if v is not None]
        given += [f for f, v in (("--num-layers", o.num_layers), ("--drop-layers", o.drop_layers)) if v is not None]
        raise InputError("exact sizes and a searched target (--target-params / --target-active-params / memory "
                         "budget) cannot be combined; restrict the search with --search AXIS=MIN:MAX instead",
                         flag=given[0])
    if not exact and not o.searching:
        raise InputError("no target: give sizes (--hidden-size, --ffn-size, --experts, ..., --num-layers, "
                         "--drop-layers), --target-params, --target-active-params, or --memory-budget / --gpu",
                         flag="--target-params")
    if o.num_layers is not None and o.drop_layers is not None:
        raise InputError("give --num-layers or --drop-layers, not both", flag="--drop-layers")
    if (o.search or o.drop_order) and not o.searching:
        flag = "--search" if o.search else "--drop-order"
        raise InputError("only used with --target-params, --target-active-params or a memory budget", flag=flag)
    if o.iterative and o.num_layers is None:
        raise InputError("re-scoring between removals needs --num-layers", flag="--iterative")
    if o.proxy not in ("kl", "loss"):
        raise InputError(f"expected kl or loss, got {o.proxy!r}", flag="--proxy")
    if o.top_k < 0 or o.shortlist < 0 or o.candidate_distill_steps < 0:
        flag = "--candidates" if o.top_k < 0 else "--shortlist" if o.shortlist < 0 else "--candidate-distill-steps"
        raise InputError("must be >= 0", flag=flag)
    _validate_shortlist(o)


def _validate_shortlist(o: PruneOptions) -> None:
    """The shortlist's options (`minitron.prune.shortlist`): ranges, and only where a search runs."""
    from minitron.prune.shortlist import check_band

    if o.band is not None:
        if not o.searching:
            raise InputError("only used with --target-params, --target-active-params or a memory budget", flag="--band")
        check_band(o.band)
    if o.distill_candidates < 1:
        raise InputError(f"must be >= 1, got {o.distill_candidates}", flag="--distill-candidates")
    if o.candidate_distill_steps and not o.data:
        raise InputError("ranking candidates by a short distillation needs calibration text (--data)",
                         flag="--candidate-distill-steps")


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


def _target(o: PruneOptions) -> dict:
    """What was asked for, as recorded in the JSON document and minitron.json.

    A search's `kind` names its targets, joined by `+` when several must hold (`params+active_params`).
    """
    if o.searching:
        kinds, out = [], {}
        if o.target_params is not None:
            kinds.append("params")
            out["target_params"] = o.target_params
        if o.target_active_params is not None:
            kinds.append("active_params")
            out["target_active_params"] = o.target_active_params
        if o.budget is not None:
            kinds.append("memory")
            out.update(budget_bytes=o.budget.budget_bytes, gpu=o.budget.gpu, context_length=o.context_length,
                       batch_size=o.batch_size, dtype=o.dtype, state_dtype=o.state_dtype, engine=o.engine,
                       kv_dtype=o.kv_dtype, prefill_chunk=o.prefill_chunk, tensor_parallel=o.tensor_parallel)
        return {"kind": "+".join(kinds), **out}
    exact = {k: v for k, v in asdict(o.shape).items() if v is not None}
    if o.num_layers is not None:
        exact["num_layers"] = o.num_layers
    if o.drop_layers is not None:
        exact["drop_layers"] = o.drop_layers
    return {"kind": "exact", **exact, "iterative": o.iterative}


def _memory(arch, o: PruneOptions):
    return estimate(arch, context_length=o.context_length, batch_size=o.batch_size, dtype=o.dtype,
                    state_dtype=o.state_dtype, engine=o.engine, kv_dtype=o.kv_dtype, prefill_chunk=o.prefill_chunk,
                    tensor_parallel=o.tensor_parallel)


def prune(o: PruneOptions, *, progress=None, log=lambda msg: None) -> dict:
    """Run `minitron prune`. `progress(description, done, total)` reports long loops."""
    _validate_kind(o)
    ckpt = open_checkpoint(o.model, fetch_weights=not o.dry_run)
    arch = ckpt.arch
    o.context_length = resolve_context(arch, o.context_length)
    o.seq_len = resolve_seq_len(o.seq_len, arch.max_position_embeddings)
    if not o.dry_run:
        if o.out is None:
            raise InputError("an output directory is needed (or use --dry-run)", flag="--out")
        if not ckpt.has_weights:
            raise InputError(f"{ckpt.path} has no weights; only --dry-run works on a bare config", flag="--dry-run")
        from minitron.io import check_output_dir

        check_output_dir(o.out, overwrite=o.overwrite, inputs=[ckpt.path])
    _memory(arch, o)  # validates --context-length, --batch-size, dtypes, --tensor-parallel
    why = tp_impossible(arch, o.tensor_parallel)
    if why:
        raise InputError(why, flag="--tensor-parallel")
    keep_min = parse_keep_types(o.keep_layer_types)
    if "*" in arch.pattern:
        # transformers' cache (generate) fails on a Nemotron-H with no attention layer left
        # (`get_seq_length` needs one): keep one unless the user says `attention=0`.
        keep_min.setdefault("*", 1)
    if o.searching:
        parse_search(o.search)
        if o.target_params is not None and o.target_params >= arch.total_params:
            raise InputError(f"{o.target_params:,} is not below the model's {arch.total_params:,} parameters",
                             flag="--target-params")
        if o.target_active_params is not None and o.target_active_params >= arch.total_active_params:
            raise InputError(f"{o.target_active_params:,} is not below the model's {arch.total_active_params:,} "
                             "active parameters per token", flag="--target-active-params")
        if o.drop_order is not None:
            parse_layer_list(o.drop_order, arch.num_layers, "--drop-order")
    else:
        broken = tp_problems(shape_arch(arch, validate_shape(arch, o.shape)), o.tensor_parallel)
        if broken:  # checked before any work; the search lists only shardable shapes
            flag, rule = broken[0]
            raise InputError(f"{rule}: vLLM cannot shard it over {o.tensor_parallel} GPUs", flag=flag)
        if o.drop_layers is not None:
            check_drop(arch, parse_layer_list(o.drop_layers, arch.num_layers, "--drop-layers"), keep_min,
                       "--drop-layers")
        if o.num_layers is not None and not 1 <= o.num_layers <= arch.num_layers:
            raise InputError(f"must be in 1..{arch.num_layers}, got {o.num_layers}", flag="--num-layers")
    if o.data or o.iterative:
        from minitron.models.checkpoint import resolve_device

        resolve_device(o.device)
    scores = _load_scores(o, ckpt)
    if not o.dry_run and scores is None:
        raise InputError("writing a pruned model needs importance scores (run `minitron score` first)",
                         flag="--scores")
    doc: dict = {"model": str(ckpt.path), "family": arch.family, "dry_run": o.dry_run, "scores": str(o.scores) if o.scores else None,
                 "target": _target(o)}

    if o.searching:
        plan, cands = _search(o, ckpt, scores, keep_min, doc, progress, log)
    else:
        plan, cands = _exact(o, ckpt, scores, keep_min, log), None

    target = plan.target()
    before, after = _memory(arch, o), _memory(target, o)
    doc.update(
        params_before=arch.total_params,
        params_after=target.total_params,
        active_params_before=arch.total_active_params,
        active_params_after=target.total_active_params,
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
        doc["config"] = target.to_config()  # the config.json the pruned model would have
        return doc
    doc["out"] = str(o.out)
    _write(o, ckpt, plan, doc, progress)
    return doc


def _exact(o: PruneOptions, ckpt: Checkpoint, scores, keep_min, log):
    arch = ckpt.arch
    shape = validate_shape(arch, o.shape)
    dropped: list[int] = []
    if o.drop_layers is not None:
        dropped = parse_layer_list(o.drop_layers, arch.num_layers, "--drop-layers")
        check_drop(arch, dropped, keep_min, "--drop-layers")
    elif o.num_layers is not None:
        if not 1 <= o.num_layers <= arch.num_layers:
            raise InputError(f"must be in 1..{arch.num_layers}, got {o.num_layers}", flag="--num-layers")
        k = arch.num_layers - o.num_layers
        if k and o.iterative:
            dropped = _iterative_drop(o, ckpt, k, keep_min, log)
        elif k:
            if scores is None:
                raise InputError("choosing layers needs the layer scores of --scores (or give --drop-layers)",
                                 flag="--num-layers")
            order = least_important(scores["layers"], arch, keep_min)
            if len(order) < k:
                raise InputError(f"--keep-layer-types leaves only {len(order)} droppable layers", flag="--num-layers")
            dropped = order[:k]
    return make_plan(arch, shape, scores, dropped)


def _iterative_drop(o: PruneOptions, ckpt: Checkpoint, k: int, keep_min, log) -> list[int]:
    """Drop one layer at a time, re-scoring the remaining layers with the others already skipped."""
    try:
        from minitron.importance.depth import layer_scores
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
        arch_left = ckpt.arch  # keep_min counts are over the original pattern minus the dropped layers
        allowed = drop_sequence(arch_left, [*dropped, *order], keep_min)[len(dropped):]
        if not allowed:
            raise InputError(f"--keep-layer-types leaves only {len(dropped)} droppable layers", flag="--num-layers")
        dropped.append(allowed[0])
        log(f"iterative depth: drop layer {allowed[0]} ({step + 1}/{k})")
    return dropped


def _model_and_blocks(o: PruneOptions, ckpt: Checkpoint, *, n_eval: int, n_train: int):
    from minitron.data import load_blocks
    from minitron.models.checkpoint import load_model, load_tokenizer, resolve_device

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


def _search(o: PruneOptions, ckpt: Checkpoint, scores, keep_min, doc, progress, log):
    arch = ckpt.arch
    order = None
    if o.drop_order is not None:
        order = parse_layer_list(o.drop_order, arch.num_layers, "--drop-order")
    elif scores is not None:
        order = least_important(scores["layers"], arch, keep_min)
    space = default_space(arch, depth=order is not None, tensor_parallel=o.tensor_parallel)
    asked = parse_search(o.search)
    if order is None and "num_layers" in asked and asked["num_layers"].lo < arch.num_layers:
        raise InputError("searching depth needs a drop order: --drop-order or the layer scores of --scores",
                         flag="--search")
    space.update(asked)
    doc["search_space"] = {a: [space[a].lo, space[a].hi, space[a].step] for a in AXES}
    cands = enumerate_candidates(arch, space, drop_order=order, keep_min=keep_min, budget=o.budget,
                                 target_params=o.target_params, target_active_params=o.target_active_params,
                                 context_length=o.context_length, batch_size=o.batch_size, dtype=o.dtype,
                                 state_dtype=o.state_dtype, engine=o.engine, kv_dtype=o.kv_dtype,
                                 prefill_chunk=o.prefill_chunk, tensor_parallel=o.tensor_parallel)
    if o.tensor_parallel > 1 and not cands:
        raise InputError(f"no shape of the search space can be sharded over {o.tensor_parallel} GPUs "
                         "(widen --search to multiples of it)", flag="--tensor-parallel")
    require_feasible(cands, budget=o.budget, target_params=o.target_params,
                     target_active_params=o.target_active_params)
    feasible = rank_by_params(cands)
    doc["n_candidates"], doc["n_feasible"] = len(cands), len(feasible)
    rows, info = _shortlist_and_rank(o, ckpt, scores, feasible, progress, log)
    doc["ranking"], doc["shortlist"], doc["winner_reason"] = info["ranking"], info["shortlist"], info["reason"]
    best = rows[0]["_c"]
    for rank, d in enumerate(rows, 1):
        d["rank"] = rank
    shown = rows if o.top_k == 0 else rows[: o.top_k]
    cands_out = [{k: v for k, v in d.items() if k != "_c"} for d in shown]
    return make_plan(arch, best.shape(), scores, best.dropped_layers), cands_out


def _shortlist_and_rank(o: PruneOptions, ckpt: Checkpoint, scores, feasible, progress, log):
    """Rows of every feasible candidate, the ranked shortlist first (winner on top), then the others
    largest first; and what the JSON document says of the ranking (`minitron.prune.shortlist`)."""
    from minitron.prune import shortlist as sl

    limits = sl.limits_of(budget_bytes=o.budget.budget_bytes if o.budget is not None else None,
                          target_params=o.target_params, target_active_params=o.target_active_params)
    short = sl.take(feasible, n=o.shortlist, band=DEFAULT_BAND if o.band is None else o.band, limits=limits)
    picked = {id(c) for c in short.members}

    def row(c, shortlisted):
        return c.to_dict() | {"budget_use": round(sl.budget_use(c, limits), 6), "shortlisted": shortlisted, "_c": c}

    top = [row(c, True) for c in short.members]
    rest = [row(c, False) for c in feasible if id(c) not in picked]
    info = {"shortlist": short.to_dict(), "ranking": "params"}
    key, distilled = None, 0
    if scores is not None and ckpt.has_weights and o.data and top:
        key, distilled = _rank_with_model(o, ckpt, scores, top, progress, log)
        info["ranking"] = f"{key} after {o.candidate_distill_steps} steps" if distilled else key
        info["shortlist"] |= {"proxy": f"proxy_{o.proxy}", "distilled": distilled,
                              "distill_steps": o.candidate_distill_steps}
    elif scores is not None and ckpt.has_weights:
        log("ranking candidates by parameters (give --data to rank the shortlist by a zero-shot proxy)")
    rows = top + rest
    info["reason"] = sl.reason(rows, key=key, shortlist=len(top), distilled=distilled, steps=o.candidate_distill_steps)
    return rows, info


def _rank_with_model(o: PruneOptions, ckpt: Checkpoint, scores, short: list[dict], progress, log):
    """Rank `short` in place by the zero-shot proxy (all of it), then the best `--distill-candidates` by the
    same figure after `--candidate-distill-steps` of distillation. Returns (the field ranked by, how many
    were distilled)."""
    from minitron.recipes.candidates import distill_scores, proxy_scores

    n_train = o.distill_samples if o.candidate_distill_steps else 0
    model, eval_blocks, train_blocks = _model_and_blocks(o, ckpt, n_eval=o.proxy_samples, n_train=n_train)
    log(f"zero-shot proxy on all {len(short)} shortlisted candidates ({len(eval_blocks)} held-back blocks)")
    figs = proxy_scores(model, ckpt.arch, [d["_c"] for d in short], scores, eval_blocks,
                        progress=(lambda n, t: progress("proxy", n, t)) if progress else None)
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
                          progress=(lambda n, t: progress("distill", n, t)) if progress else None)
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

    target = plan.target()
    cb = (lambda n, t, b: progress("prune", n, t)) if progress else None
    with atomic_output_dir(o.out, overwrite=o.overwrite) as tmp:
        files = prune_checkpoint(ckpt, plan, tmp, max_shard_bytes=o.max_shard_bytes, progress=cb)
        cfg = target.to_config()
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

