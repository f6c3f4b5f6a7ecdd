"""`minitron distill` as a library call: validate, load, train (resuming if asked), write the result.

Order of work: every input is checked (paths, models, tokenizers, data, options, the output
directory) before a model is loaded or a file written; then the run directory `<out>.partial/`
(see `checkpointing`) receives checkpoints and metrics; at the end the student is written as a
Hugging Face directory into a temporary directory beside `--out` and renamed into place.
Under torchrun every rank runs this function; rank 0 alone writes.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from minitron import distributed as dist
from minitron.distill.checkpointing import RunDir, run_dir_for
from minitron.distill.trainer import TrainConfig, Trainer, unwrap
from minitron.errors import InputError, MinitronError
from minitron.hub import resolve_model_path
from minitron.options import group, option
from minitron.recipes.distill_models import FSDP_LOADS, load_models


@dataclass
class DistillOptions:
    teacher: Path = option("--teacher", help="Teacher model directory (e.g. the unpruned model).")
    student: Path = option("--student", help="Student model directory (e.g. the pruned model).")
    data: list[Path] = option("--data", help="Training text: .txt, .jsonl or .parquet (repeatable).")
    out: Path = option("--out", "-o", help="Output directory for the distilled student.")
    train: TrainConfig = group(TrainConfig, required=True)  # --steps, --lr, --loss, ...
    # alternative to train.steps (steps = ceil(tokens / (global x seq_len)))
    tokens: int | None = option("--tokens", default=None,
                                help="Training tokens; steps = ceil(tokens / (global batch x seq len)).")
    seq_len: int | None = option(  # None: min(2048, the models' max_position_embeddings)
        "--seq-len", default=None, help="Tokens per training block (default: min(2048, max_position_embeddings)).")
    max_shard_size: str | int = option("--max-shard-size", default="5GB", type=str,
                                       help="Largest output shard: 5GB, 500MiB, bytes.")
    teacher_spec: str | None = None  # --teacher as given (set by prepare)
    eval_data: list[Path] = option("--eval-data", default_factory=list,
                                   help="Held-out text for val KL / val LM loss (repeatable).")
    eval_samples: int | None = option(
        "--eval-samples", default=None,
        help="At most this many eval blocks (default: all; 16 training blocks without --eval-data).")
    text_field: str = option("--text-field", default="text", help="Text field of .jsonl/.parquet records.")
    save_every: int = option("--save-every", default=100,
                             help="Checkpoint every N steps into <out>.partial/ (0: never).")
    keep_last: int = option("--keep-last", default=2, help="Checkpoints kept.")
    device: str = option("--device", default="auto", help="auto, cpu or cuda.")
    dtype: str = option("--dtype", default="auto", help="Compute dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, "
                                                        "fp32. Student master weights stay fp32.")
    gradient_checkpointing: bool = option("--gradient-checkpointing", default=False,
                                          help="Recompute activations in the backward (less memory).")
    fsdp: bool = option("--fsdp", default=False, help="Shard student and teacher with FSDP2 (under torchrun).")
    overwrite: bool = option("--overwrite", default=False, help="Replace an existing output directory.")
    restart: bool = option("--restart", default=False,
                           help="Discard an unfinished run in <out>.partial/ instead of resuming it.")
    teacher_logits: Path | None = option(  # a `minitron teacher-logits` cache: train without loading the teacher
        "--teacher-logits", default=None,
        help="Cached teacher logits (from `minitron teacher-logits`): train on them without loading the teacher; "
             "--teacher is still checked against the cache.")
    nproc: int | None = option(  # the memory plan for this many devices (default: the processes of this run)
        "--nproc", default=None, help="Devices to plan for (default: the torchrun processes; --dry-run also shows 8).")
    gpu: str | None = option(  # a budget per device: a GPU preset of minitron.memory ...
        "--gpu", default=None, help="Budget per device: a GPU preset (a10g, l4, a100-80gb, h100-80gb, h200, ...); a run "
                                    "that does not fit is refused (exit 3).")
    memory_budget: str | None = option(  # ... or a size; the run is refused (exit 3) when the plan does not fit
        "--memory-budget", default=None, help="Budget per device as a size (e.g. 80GiB); as --gpu.")
    report_to: str = option(  # or "tensorboard" (events in <out>.partial/tensorboard, then <out>/tensorboard)
        "--report-to", default="none",
        help="none or tensorboard (events in <out>.partial/tensorboard while running, then <out>/tensorboard); "
             "metrics.jsonl is always written.")
    fsdp_load: str = option(  # --fsdp: each rank reads only its shards; "full": every rank loads it all first
        "--fsdp-load", default="sharded",
        help="With --fsdp: sharded (each rank reads only its shards of the checkpoints) or full (every rank loads "
             "them whole on CPU first: the former path).")

    def check_length(self) -> DistillOptions:
        """Exactly one of --steps and --tokens (the command line's; a library caller sets train.steps)."""
        steps = self.train.steps
        if (steps is None) == (self.tokens is None):
            raise InputError("give exactly one of --steps and --tokens", flag="--steps")
        if steps is not None and steps < 1:
            raise InputError(f"must be >= 1, got {steps}", flag="--steps")
        self.train.steps = steps or 1  # with --tokens: set from the token count by prepare()
        return self


# ---------------------------------------------------------------------- validation
def check_same_tokenizer(t_ckpt, s_ckpt, t_tok, s_tok) -> None:
    """Teacher and student must agree on the vocabulary (size and ids)."""
    tv, sv = t_ckpt.arch.vocab_size, s_ckpt.arch.vocab_size
    if tv != sv:
        raise InputError(f"teacher vocabulary ({tv}) and student vocabulary ({sv}) differ; "
                         "distillation needs one tokenizer", flag="--student")  # fmt: skip
    if t_tok is None or s_tok is None:
        return
    if t_tok.get_vocab() != s_tok.get_vocab():
        raise InputError("teacher and student tokenizers map tokens to different ids", flag="--student")
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if getattr(t_tok, attr, None) != getattr(s_tok, attr, None):
            raise InputError(f"teacher and student tokenizers differ in {attr}", flag="--student")


@dataclass
class Prepared:
    opts: DistillOptions
    teacher_ckpt: object
    student_ckpt: object
    tokenizer: object
    tokenizer_dir: Path
    train_blocks: object
    eval_blocks: object
    eval_source: str
    device: str
    dtype: str
    run_dir: RunDir
    identity: dict
    cache: object = None  # TeacherLogits when --teacher-logits
    eval_split: str = "train"
    train: object = None  # minitron.data.Dataset (blocks, loss masks, sources, mix weights)
    evals: object = None
    layer_map: list | None = None  # --intermediate-weight: the teacher layer of each student layer


def prepare(opts: DistillOptions) -> Prepared:
    """Every check that can fail on user input; loads tokenizer and data, no models, writes nothing."""
    from minitron.data import data_fingerprints, load_dataset, mix_eval, resolve_seq_len
    from minitron.device import auto_dtype, resolve_device
    from minitron.io import check_output_dir, model_fingerprint
    from minitron.models.checkpoint import open_model_dir, optional_tokenizer

    opts.out = Path(opts.out)
    opts.teacher_spec = str(opts.teacher)  # as named (a hub id names the card's base_model)
    opts.teacher = resolve_model_path(opts.teacher, weights=True, flag="--teacher")  # directory, bundled or hub id
    opts.student = resolve_model_path(opts.student, weights=True, flag="--student")
    world = dist.world_size()
    if opts.tokens is not None:
        if opts.tokens < 1:
            raise InputError(f"must be >= 1, got {opts.tokens}", flag="--tokens")
    if opts.save_every < 0:
        raise InputError(f"must be >= 0, got {opts.save_every}", flag="--save-every")
    from minitron.memory import parse_size

    opts.max_shard_size = parse_size(opts.max_shard_size, flag="--max-shard-size")
    if opts.keep_last < 1:
        raise InputError(f"must be >= 1, got {opts.keep_last}", flag="--keep-last")
    if opts.eval_samples is not None and opts.eval_samples < 1:
        raise InputError(f"must be >= 1, got {opts.eval_samples}", flag="--eval-samples")
    if opts.tokens is None:
        opts.train.validate(world)
    device = dist.local_device(resolve_device(opts.device))
    dtype = auto_dtype(opts.dtype, device)
    opts.train.autocast_dtype = None if dtype == "fp32" else dtype
    from minitron.distill.reporting import check_report_to

    check_report_to(opts.report_to)
    if opts.fsdp and world < 2:
        raise InputError("needs torchrun with at least 2 processes (torchrun --nproc-per-node N -m minitron ...)",
                         flag="--fsdp")  # fmt: skip
    if opts.fsdp_load not in FSDP_LOADS:
        raise InputError(f"must be one of {', '.join(FSDP_LOADS)}, got {opts.fsdp_load!r}", flag="--fsdp-load")

    t_ckpt = open_model_dir(opts.teacher, "--teacher")
    s_ckpt = open_model_dir(opts.student, "--student")
    layer_map = _layer_map(opts, t_ckpt, s_ckpt)
    if opts.fsdp and opts.fsdp_load == "sharded":  # every tensor has a source in the files (headers only)
        from minitron.distill.sharded_load import check_loadable

        models = [(opts.student, "--student")] + ([(opts.teacher, "--teacher")] if opts.teacher_logits is None else [])
        for path, flag in models:
            try:
                check_loadable(path)
            except MinitronError as e:
                raise InputError(f"{e} (sharded FSDP loading; --fsdp-load full loads it whole)", flag=flag) from None
    if opts.gpu or opts.memory_budget:  # the same check as --dry-run, before anything loads
        from minitron.recipes.distill_plan import check_plan, memory_plan

        check_plan(memory_plan(opts, t_ckpt, s_ckpt, device))
    t_tok, s_tok = optional_tokenizer(opts.teacher, "--teacher"), optional_tokenizer(opts.student, "--student")
    check_same_tokenizer(t_ckpt, s_ckpt, t_tok, s_tok)
    tok, tok_dir = (s_tok, opts.student) if s_tok is not None else (t_tok, opts.teacher)
    if tok is None:
        raise InputError(f"neither {opts.teacher} nor {opts.student} has tokenizer files", flag="--teacher")
    check_output_dir(opts.out, overwrite=opts.overwrite, inputs=[opts.teacher, opts.student])

    max_pos = min(t_ckpt.arch.max_position_embeddings or 1 << 30, s_ckpt.arch.max_position_embeddings or 1 << 30)
    opts.seq_len = resolve_seq_len(opts.seq_len, max_pos)
    if opts.tokens is not None:
        g = opts.train.global_batch_size or opts.train.micro_batch_size * world
        opts.train.steps = max(1, math.ceil(opts.tokens / (g * opts.seq_len)))
        opts.train.validate(world)
    train = load_dataset(opts.data, tok, seq_len=opts.seq_len, text_field=opts.text_field, flag="--data",
                         max_positions=max_pos)  # fmt: skip
    eval_all = None
    if opts.eval_data:
        eval_all = load_dataset(opts.eval_data, tok, seq_len=opts.seq_len, text_field=opts.text_field,
                                flag="--eval-data", max_positions=max_pos)  # fmt: skip
        evals, source = mix_eval(eval_all, opts.eval_samples), "eval-data"
    else:  # no held-out data: report figures on the first training blocks (recorded as such)
        evals, source = mix_eval(train, opts.eval_samples or 16), "train"
    cache, eval_split = None, "train"
    if opts.teacher_logits is not None:
        from minitron.recipes.teacher_logits import open_for_distill

        opts.teacher_logits = Path(opts.teacher_logits)
        cache, train, evals, eval_split = open_for_distill(
            opts.teacher_logits, teacher=opts.teacher, tokenizer=tok, vocab_size=s_ckpt.arch.vocab_size,
            seq_len=opts.seq_len, data=opts.data, train=train, eval_data=opts.eval_data, eval_all=eval_all,
            eval_samples=opts.eval_samples, temperature=opts.train.temperature, top_k=opts.train.top_k,
            steps=opts.train.steps, global_batch=opts.train.global_batch_size)  # fmt: skip

    run_dir = RunDir(run_dir_for(opts.out))
    identity = {
        "teacher": model_fingerprint(opts.teacher), "student": model_fingerprint(opts.student),
        "data": [d["sha256"] for d in data_fingerprints(data_paths(opts.data))], "seq_len": opts.seq_len,
        "data_weights": train.weights,
        "fsdp": opts.fsdp,  # FSDP checkpoints key the optimiser state by name, plain ones by index
        **({"teacher_logits": _cache_identity(cache)} if cache is not None else {}),
        **{k: v for k, v in opts.train.to_dict().items() if k not in ("eval_every", "eval_batch_size")},
    }  # fmt: skip
    if not opts.restart:
        run_dir.check_resumable(identity)
    return Prepared(opts, t_ckpt, s_ckpt, tok, tok_dir, train.blocks, evals.blocks, source, device, dtype, run_dir,
                    identity, cache, eval_split, train, evals, layer_map)  # fmt: skip


def _layer_map(opts: DistillOptions, t_ckpt, s_ckpt) -> list[int] | None:
    """--intermediate-weight: the teacher layer of each student layer (from the student's prune record)."""
    if not opts.train.intermediate_weight:
        return None
    from minitron.distill import intermediate as im

    if opts.teacher_logits is not None:
        raise InputError("needs the teacher model: cached teacher logits (--teacher-logits) carry no hidden states",
                         flag=im.FLAG)  # fmt: skip
    return im.layer_map(opts.student, t_ckpt.arch, s_ckpt.arch)


def data_paths(specs) -> list[Path]:
    """The files of `--data` specs (`path` or `path:weight`)."""
    from minitron.data import parse_data_specs

    return parse_data_specs(specs)[0]


def _cache_identity(cache) -> str:
    from minitron.io import file_sha256

    return file_sha256(cache.path / "index.json")[:16]


# ---------------------------------------------------------------------- the run
def run_distill(opts: DistillOptions, *, on_event=None) -> dict:
    """Validate, train (resuming from `<out>.partial/` when it holds a checkpoint), write `--out`.

    `on_event(kind, payload)` is called on rank 0 for "resume", "step" and "eval" (for live output).
    Returns the summary (the `--json` document).
    """
    import torch

    p = prepare(opts)
    main = dist.is_main()
    emit = on_event if (on_event and main) else (lambda *a: None)
    if opts.restart and main:
        p.run_dir.remove()
    dist.barrier()
    if main:
        p.run_dir.start(p.identity)
    dist.barrier()

    torch.manual_seed(opts.train.seed)
    teacher, student = load_models(p)
    from minitron.distill.sampling import Mix

    order = Mix(p.train.sources, p.train.weights, opts.train.seed) if p.train.weights else None
    trainer = Trainer(teacher, student, p.train_blocks, p.eval_blocks, opts.train, device=p.device, fsdp=opts.fsdp,
                      train_masks=p.train.masks, eval_masks=p.evals.masks, order=order, layer_map=p.layer_map)  # fmt: skip
    resumed_from = None
    latest = p.run_dir.latest()
    if latest is not None:
        trainer.load_state_dict(_read_checkpoint(p, latest[1]))
        resumed_from = trainer.step
        if main:
            p.run_dir.truncate_metrics(trainer.step)
        emit("resume", {"step": trainer.step, "checkpoint": str(latest[1])})
    elif main:
        p.run_dir.truncate_metrics(-1)

    tb = None
    if main and opts.report_to == "tensorboard":
        from minitron.distill.reporting import TensorBoard

        tb = TensorBoard(p.run_dir.path / "tensorboard")

    def on_step(m):
        if main:
            p.run_dir.append_metrics(m)
            if tb:
                tb.step(m)
        emit("step", m)

    def on_eval(step, ev):
        rec = {"step": step, "tokens": step * opts.train.global_batch_size * p.train_blocks.shape[1], "eval": ev}
        if main:
            p.run_dir.append_metrics(rec)
            if tb:
                tb.eval(rec)
        emit("eval", rec)

    def save():
        state = trainer.state_dict()  # collective under FSDP
        if main:
            p.run_dir.save(state, trainer.step, opts.keep_last)
        dist.barrier()

    t0 = time.perf_counter()
    summary = trainer.train(on_step=on_step, on_eval=on_eval, save=save,
                            should_save=lambda s: opts.save_every > 0 and s % opts.save_every == 0)  # fmt: skip
    if tb:
        tb.close()
    final_sd = _full_state_dict(trainer) if opts.fsdp else None
    summary.update({"out_dir": str(opts.out), "resumed_from": resumed_from, "eval_source": p.eval_source,
                    "world_size": dist.world_size(), "wall_time_s": time.perf_counter() - t0,
                    "seq_len": p.train_blocks.shape[1], "global_batch_size": opts.train.global_batch_size,
                    "loss_kind": opts.train.loss,
                    "teacher_logits": str(opts.teacher_logits) if opts.teacher_logits else None})  # fmt: skip
    if main:
        _write_output(p, unwrap(student), summary, final_sd)
        p.run_dir.remove()
    dist.barrier()
    return summary


def _read_checkpoint(p: Prepared, path: Path) -> dict:
    """A checkpoint to resume from. Under FSDP rank 0 alone reads it (weights and optimiser state of
    the whole model); the other ranks get its small entries and `{}` for the two big ones, which
    `Trainer.load_state_dict` broadcasts from rank 0 shard by shard."""
    if not p.opts.fsdp:
        return p.run_dir.load(path)
    big = ("student", "optimizer")
    state = p.run_dir.load(path) if dist.is_main() else None
    small = dist.broadcast_object({k: v for k, v in state.items() if k not in big} if state is not None else None)
    return state if state is not None else {**small, "student": {}, "optimizer": {}}


def _full_state_dict(trainer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(trainer.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_output(p: Prepared, student, summary: dict, state_dict=None) -> None:
    """The student as a Hugging Face directory (in the student checkpoint's dtype) + tokenizer +
    metrics.jsonl + minitron.json, renamed into place in one step."""
    from minitron import card
    from minitron.data import data_fingerprints
    from minitron.dtypes import compute_dtype_of_code, torch_dtype
    from minitron.io import atomic_output_dir, model_fingerprint, write_provenance
    from minitron.models.checkpoint import copy_side_files

    opts = p.opts
    dtype = torch_dtype(compute_dtype_of_code(p.student_ckpt.dtype))
    from minitron.distill.sharded_load import tied_aliases

    sd = state_dict if state_dict is not None else student.state_dict()
    tied = tied_aliases(student)  # e.g. a tied lm_head: stored once, as from_pretrained expects (copies below untie it)
    sd = {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu() for k, v in sd.items()
          if k not in tied}  # fmt: skip
    with atomic_output_dir(opts.out, overwrite=opts.overwrite) as tmp:
        student.config.use_cache = True
        student.save_pretrained(tmp, state_dict=sd, max_shard_size=opts.max_shard_size)
        cfg = Path(tmp) / "config.json"
        _set_config_dtype(cfg, dtype)
        copy_side_files(p.tokenizer_dir, Path(tmp))
        if p.run_dir.metrics.is_file():
            shutil.copy2(p.run_dir.metrics, Path(tmp) / "metrics.jsonl")
            from minitron.distill.reporting import summary_plot

            summary_plot(p.run_dir.metrics, Path(tmp) / "distill_summary.png", title=f"distill {opts.out.name}")
        if (p.run_dir.path / "tensorboard").is_dir():
            shutil.copytree(p.run_dir.path / "tensorboard", Path(tmp) / "tensorboard")
        options = {k: v for k, v in vars(opts).items() if k != "train"} | {"train": opts.train.to_dict()}
        inputs = {"teacher": {"path": str(opts.teacher), "fingerprint": model_fingerprint(opts.teacher)},
                  "student": {"path": str(opts.student), "fingerprint": model_fingerprint(opts.student)},
                  "data": data_fingerprints(data_paths(opts.data)), "data_weights": p.train.weights,
                  "eval_data": data_fingerprints(data_paths(opts.eval_data)) if opts.eval_data else []}  # fmt: skip
        if p.cache is not None:
            inputs["teacher_logits"] = {"path": str(opts.teacher_logits), "index_sha256": _cache_identity(p.cache),
                                        "k": p.cache.k, "bytes_per_token": p.cache.bytes_per_token}  # fmt: skip
        summary = {"family": p.student_ckpt.arch.family, **summary}
        write_provenance(tmp, "distill", options, inputs=inputs, result=summary)
        card.write(tmp, card.for_distilled(opts.teacher_spec or opts.teacher, opts.out, p.teacher_ckpt,
                                           p.student_ckpt, summary))


def _set_config_dtype(cfg: Path, dtype) -> None:
    import json

    doc = json.loads(cfg.read_text())
    name = str(dtype).replace("torch.", "")
    doc["dtype"] = name
    if "torch_dtype" in doc:
        doc["torch_dtype"] = name
    cfg.write_text(json.dumps(doc, indent=2) + "\n")
