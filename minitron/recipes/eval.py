"""`evaluate_models()`: every requested figure for each model, one model in memory at a time.

Order of work: validate every option, open every checkpoint (headers only), load and compare the
tokenizers, tokenise the data and resolve the task names — all before the first model is loaded. Then,
per model: load, perplexity / loss (and KL to the teacher, which stays loaded for the whole run),
lm-eval tasks, throughput, free. The result is the `--json` document (see docs/eval.md).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from minitron.errors import InputError
from minitron.evaluate.harness import parse_tasks, resolve_tasks
from minitron.evaluate.throughput import ThroughputSettings
from minitron.evaluate.vllm_check import VllmSettings
from minitron.options import group, option, shared, switch
from minitron.progress import report
from minitron.tensor_parallel import problems as tensor_parallel_problems

PROBE = "The quick brown fox, 1234 €, naïve café — 日本語 text.\n\tdef f(x): return x ** 2"


def _limit(v: float) -> float | int:
    """--limit: a whole number is a count, below 1 a fraction."""
    return int(v) if v >= 1 and float(v).is_integer() else v


@dataclass
class EvalOptions:
    models: list[Path]  # MODEL... (the command attaches --revision)
    data: list[Path] = option("--data", default_factory=list,
                              help="Held-out text (.txt, .jsonl, .parquet) for loss and perplexity.")
    # None: min(2048, the models' max_position_embeddings); above it refused
    seq_len: int | None = shared("seq_len", default=None)
    samples: int | None = option("--samples", default=None, help="Score only the first N blocks (default all).")
    text_field: str = option("--text-field", default="text", help="Field of .jsonl / column of .parquet data.")
    teacher: Path | None = option("--teacher", default=None, help="Also report KL(teacher || model) per token on --data.")
    tasks: str | None = option("--tasks", default=None,
                               help="lm-eval tasks, comma-separated (minitron_cloze is shipped).")
    include_path: list[Path] = option("--include-path", default_factory=list,
                                      help="Directory of local lm-eval task YAMLs (repeatable).")
    num_fewshot: int | None = option("--num-fewshot", default=None, help="Few-shot examples (task default).")
    limit: float | None = option("--limit", default=None, parse=_limit,
                                 help="Items per task: a count, or a fraction below 1 (testing).")
    batch_size: int = option("--batch-size", default=1, help="Blocks / lm-eval requests per forward pass.")
    throughput: bool = option("--throughput", default=False, help="Measure prefill and decode tokens/s.")
    throughput_settings: ThroughputSettings = group(ThroughputSettings)  # --prompt-len, --gen-len, ...
    context_length: int | None = shared("context_length", default=None)  # None: the reference model's max positions
    sequences: int = shared("sequences", default=1)  # memory model: sequences held at once
    # memory model: weights and KV dtype (what a server holds), not the compute dtype
    memory_dtype: str = shared("memory_dtype", default="bf16")
    state_dtype: str | None = shared("state_dtype", default=None)  # memory model: SSM state dtype (default: the config's)
    engine: str = shared("engine", default="vllm")  # memory model: the serving engine whose terms count
    kv_dtype: str | None = shared("kv_dtype", default=None)  # memory model: KV-cache dtype (default: the activations')
    prefill_chunk: int | None = shared("prefill_chunk", default=None)  # memory model (vllm): chunked-prefill tokens
    tensor_parallel: int = shared("tensor_parallel", default=1)  # figures per GPU; widths checked against vLLM's rules
    gpu: str | None = option("--gpu", default=None, help="Deployment fit: concurrent sequences on this GPU.")
    memory_budget: str | None = option("--memory-budget", default=None,
                                       help="Deployment fit against a size instead, e.g. 19.66GiB.")
    budget: object | None = None  # memory.Budget: deployment fit (max sequences) per model; from --gpu / --memory-budget
    # also run each model in vLLM (greedy check, throughput, cache bytes)
    vllm: VllmSettings | None = group(VllmSettings, enable=switch(
        "--vllm", "Also run each model in vLLM: greedy tokens vs transformers, generation throughput, cache bytes."))
    device: str = option("--device", default="auto", help="auto, cpu or cuda[:N].")
    dtype: str = option("--dtype", default="auto",  # bf16 on CUDA, fp32 on CPU
                        help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")
    seed: int = option("--seed", default=0, help="Seed of lm-eval's few-shot sampling and the throughput prompt.")

    def __post_init__(self):
        if self.budget is None:
            from minitron.memory import make_budget

            self.budget = make_budget(gpu=self.gpu, memory_budget=self.memory_budget, engine=self.engine)
        if self.throughput_settings.seed != self.seed:  # --seed is the throughput prompt's too
            self.throughput_settings = replace(self.throughput_settings, seed=self.seed)
        if self.vllm is not None and self.vllm.kv_cache_dtype == "auto" and self.kv_dtype == "fp8":
            self.vllm = replace(self.vllm, kv_cache_dtype="fp8")  # vLLM's cache dtype follows --kv-dtype

    def validate(self) -> None:
        if not self.models:
            raise InputError("give at least one model directory", flag="MODEL")
        if self.seq_len is not None and self.seq_len < 2:
            raise InputError(f"must be at least 2, got {self.seq_len}", flag="--seq-len")
        if self.batch_size < 1:
            raise InputError(f"must be >= 1, got {self.batch_size}", flag="--batch-size")
        if self.samples is not None and self.samples < 1:
            raise InputError(f"must be >= 1, got {self.samples}", flag="--samples")
        if self.teacher is not None and not self.data:
            raise InputError("KL to the teacher is measured on --data; give --data too", flag="--teacher")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise InputError(f"must be >= 0, got {self.num_fewshot}", flag="--num-fewshot")
        if self.limit is not None and self.limit <= 0:
            raise InputError(
                f"must be > 0 (a count, or a fraction below 1), got {self.limit}", flag="--limit"
            )
        if self.context_length is not None and self.context_length < 0:
            raise InputError(f"must be >= 0, got {self.context_length}", flag="--context-length")
        if not self.tasks and (self.num_fewshot is not None or self.limit is not None):
            raise InputError("--num-fewshot and --limit apply to --tasks; give --tasks too", flag="--tasks")
        self.throughput_settings.validate()
        if self.vllm is not None:
            self.vllm.validate()


def tokenizer_fingerprint(tok) -> str:
    """Identity of a tokenizer: its vocabulary, special tokens and how it cuts a probe text."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]).encode())
    h.update(json.dumps(tok(PROBE, add_special_tokens=False)["input_ids"]).encode())
    return h.hexdigest()[:16]


def model_names(paths: list[Path]) -> list[str]:
    """Short names for the table: the directory name, or parent/name when names repeat."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def _release_memory() -> None:
    """Give freed models' memory back (call after dropping the last reference)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_models(opts: EvalOptions, *, progress=None, log=lambda message: None) -> dict:
    """The `minitron eval --json` document for `opts` (validated here first). `progress(stage, done, total)`
    (`minitron.progress`) counts blocks of each model's perplexity; `log(message)` says what runs next."""
    from minitron.data import data_fingerprints, load_blocks, resolve_seq_len
    from minitron.device import auto_dtype, resolve_device
    from minitron.dtypes import norm_dtype
    from minitron.evaluate import perplexity, table, throughput
    from minitron.evaluate.harness import run_tasks
    from minitron.memory import estimate, resolve_context
    from minitron.models.checkpoint import load_model, load_tokenizer, open_checkpoint

    opts.validate()
    device = resolve_device(opts.device)
    dtype = auto_dtype(opts.dtype, device)
    # ---------------------------------------------------------------- everything checked before loading
    ckpts = [open_checkpoint(p, require_weights=True) for p in opts.models]
    teacher_ckpt = open_checkpoint(opts.teacher, require_weights=True) if opts.teacher else None
    everyone = ckpts + ([teacher_ckpt] if teacher_ckpt else [])
    if opts.data:  # one block length for every model: none may see positions it was not trained on
        opts.seq_len = resolve_seq_len(opts.seq_len, min(c.arch.max_position_embeddings for c in everyone))
    opts.context_length = resolve_context(ckpts[0].arch, opts.context_length)
    norm_dtype(opts.memory_dtype, flag="--memory-dtype")
    def memory(arch):
        return estimate(arch, context_length=opts.context_length, batch_size=opts.sequences, dtype=opts.memory_dtype,
                        state_dtype=opts.state_dtype, engine=opts.engine, kv_dtype=opts.kv_dtype,
                        prefill_chunk=opts.prefill_chunk, tensor_parallel=opts.tensor_parallel)  # fmt: skip

    memory(ckpts[0].arch)  # validates the memory-model options before any model loads
    vllm_python = None
    if opts.vllm is not None:
        from minitron.evaluate.vllm_check import find_python

        vllm_python = find_python(opts.vllm.python)
        s = opts.throughput_settings
        for c in ckpts:
            if s.prompt_len + s.gen_len > c.arch.max_position_embeddings:
                raise InputError(f"--prompt-len + --gen-len ({s.prompt_len + s.gen_len}) exceeds {c.path}'s "
                                 f"max_position_embeddings ({c.arch.max_position_embeddings}); vLLM refuses it",
                                 flag="--prompt-len")  # fmt: skip
    task_names = parse_tasks(opts.tasks)
    plan = resolve_tasks(task_names, opts.include_path) if task_names or opts.include_path else None
    tokenizers = [load_tokenizer(c.path) for c in ckpts]
    blocks = None
    if opts.data:
        prints = [tokenizer_fingerprint(t) for t in tokenizers]
        if len(set(prints)) > 1:
            odd = next(c.path for c, f in zip(ckpts, prints, strict=True) if f != prints[0])
            raise InputError(f"{odd} has another tokenizer than {ckpts[0].path}: perplexities would not be comparable",
                             flag="--data")  # fmt: skip
        if teacher_ckpt is not None:
            t_print = tokenizer_fingerprint(load_tokenizer(teacher_ckpt.path))
            if t_print != prints[0] or teacher_ckpt.arch.vocab_size != ckpts[0].arch.vocab_size:
                raise InputError(f"the teacher {teacher_ckpt.path} has another tokenizer or vocabulary than "
                                 f"{ckpts[0].path}", flag="--teacher")  # fmt: skip
        odd_vocab = [c.path for c in ckpts if c.arch.vocab_size != ckpts[0].arch.vocab_size]
        if odd_vocab:
            raise InputError(
                f"{odd_vocab[0]} has another vocabulary size than {ckpts[0].path}", flag="--data"
            )
        blocks = load_blocks(opts.data, tokenizers[0], seq_len=opts.seq_len, samples=opts.samples,
                             text_field=opts.text_field, sep_eos=False)  # fmt: skip
    from minitron.hub import is_hub_id, split_revision

    names = model_names([c.path for c in ckpts])
    names = [str(spec) if is_hub_id(split_revision(str(spec))[0]) else n for spec, n in zip(opts.models, names, strict=True)]
    settings = {
        "device": device,
        "dtype": dtype,
        "data": [str(p) for p in opts.data],
        "data_files": data_fingerprints(opts.data) if opts.data else [],
        "seq_len": opts.seq_len if blocks is not None else None,
        "blocks": int(blocks.shape[0]) if blocks is not None else None,
        "tokens_per_model": int(blocks.shape[0] * (opts.seq_len - 1)) if blocks is not None else None,
        "teacher": str(teacher_ckpt.path) if teacher_ckpt else None,
        "tasks": task_names,
        "include_path": [str(p) for p in opts.include_path],
        "num_fewshot": opts.num_fewshot,
        "limit": opts.limit,
        "batch_size": opts.batch_size,
        "context_length": opts.context_length,
        "memory_model": {"context_length": opts.context_length, "sequences": opts.sequences,
                         "dtype": opts.memory_dtype, "state_dtype": opts.state_dtype, "engine": opts.engine,
                         "kv_dtype": opts.kv_dtype, "prefill_chunk": opts.prefill_chunk,
                         "tensor_parallel": opts.tensor_parallel},
        "budget": opts.budget.to_dict() if opts.budget is not None else None,
        "throughput": asdict(opts.throughput_settings) if opts.throughput or opts.vllm else None,
        "vllm": dict(asdict(opts.vllm), python=str(vllm_python)) if opts.vllm is not None else None,
    }
    # ---------------------------------------------------------------- heavy work
    teacher = None
    if teacher_ckpt is not None:
        log(f"loading teacher {teacher_ckpt.path}")
        teacher = load_model(teacher_ckpt.path, dtype=dtype, device=device, check=False)
    rows = []
    for name, ckpt, tok in zip(names, ckpts, tokenizers, strict=True):
        same_as_teacher = teacher is not None and ckpt.path.resolve() == teacher_ckpt.path.resolve()
        log(f"loading {name} ({ckpt.path})")
        model = teacher if same_as_teacher else load_model(ckpt.path, dtype=dtype, device=device, check=False)
        mem = memory(ckpt.arch)
        row = {"name": name, "path": str(ckpt.path), "params": sum(p.numel() for p in model.parameters()),
               "active_params": ckpt.arch.total_active_params,  # per token (MoE); = params when dense
               "loss": None, "perplexity": None, "kl": None, "tasks": {}, "memory": mem.to_dict(),
               "fit": opts.budget.to_dict(mem) if opts.budget is not None else None,
               "throughput": None, "vllm": None}  # fmt: skip
        if opts.tensor_parallel > 1:  # what vLLM would refuse to shard (the memory figures assume it can)
            row["tensor_parallel_problems"] = [{"flag": f, "rule": r} for f, r in
                                               tensor_parallel_problems(ckpt.arch, opts.tensor_parallel)]
        if blocks is not None:
            report(progress, f"perplexity {name}", 0, int(blocks.shape[0]))
            scores = perplexity.score_blocks(model, blocks, batch_size=opts.batch_size, teacher=teacher,
                                             progress=progress, stage=f"perplexity {name}")  # fmt: skip
            row.update(scores.to_dict(with_kl=teacher is not None))
        if plan is not None and task_names:
            log(f"lm-eval {', '.join(task_names)} on {name}")
            row["tasks"] = run_tasks(
                model,
                tok,
                plan,
                num_fewshot=opts.num_fewshot,
                limit=opts.limit,
                batch_size=opts.batch_size,
                seed=opts.seed,
                verbose=logging.getLogger("minitron").isEnabledFor(logging.DEBUG),
            )
        if opts.throughput or opts.vllm is not None:
            s = opts.throughput_settings
            log(
                f"throughput {name}: batch {s.batch_size}, prompt {s.prompt_len}, {s.gen_len} decode steps"
            )
            shape = estimate(
                ckpt.arch, context_length=s.prompt_len + s.gen_len, batch_size=s.batch_size, dtype=dtype, engine="hf"
            )  # what this transformers run holds
            row["throughput"] = throughput.measure(model, s, memory_model_bytes=shape.total_bytes)
        if opts.vllm is not None:
            from minitron.evaluate.vllm_check import check_model

            row["vllm"] = check_model(model, tok, ckpt.arch, ckpt.path, settings=opts.vllm, python=vllm_python,
                                      dtype=dtype, throughput_settings=opts.throughput_settings,
                                      hf_throughput=row["throughput"], log=log)  # fmt: skip
        rows.append(row)
        model = None  # the teacher (if this was it) stays referenced by `teacher`
        _release_memory()
    teacher = None
    _release_memory()
    for row, rel in zip(rows, table.relative(rows), strict=True):
        row["relative"] = rel
    return {"reference": names[0], "models": rows, "settings": settings}
