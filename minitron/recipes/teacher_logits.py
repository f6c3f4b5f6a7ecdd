"""`minitron teacher-logits` as a library call, and the checks `distill --teacher-logits` makes.

Writing: every input is checked (model, tokenizer, data, options, the output directory) before the
teacher is loaded; the cache is written into a temporary directory beside `--out` and renamed into
place at the end. Reading for distillation: `open_for_distill` refuses, in one line naming
`--teacher-logits`, a cache made by another teacher or tokenizer, from other data, at another
sequence length or temperature, or too small for the steps asked — before anything is written.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from minitron.distill.logit_cache import (
    FLAG,
    FORMAT,
    INDEX_FILE,
    LOGP_DTYPES,
    TeacherLogits,
    blocks_fingerprint,
    bytes_per_token,
    tokenizer_fingerprint,
    write_split,
)
from minitron.errors import InputError
from minitron.options import option


@dataclass
class TeacherLogitsOptions:
    model: Path = option("model", argument=True, help="Teacher model directory.")
    data: list[Path] = option("--data", help="Training text, exactly as `distill --data` will get it (repeatable).")
    out: Path = option("--out", "-o", help="Output directory for the cache.")
    seq_len: int | None = option(  # None: min(2048, max_position_embeddings), as distill
        "--seq-len", default=None,
        help="Tokens per block, as distill's --seq-len (default: min(2048, max_position_embeddings)).")
    top_k: int = option("--top-k", default=64, help="Teacher tokens kept per position (plus one tail bin for the rest).")
    temperature: float = option("--temperature", default=1.0,
                                help="Softmax temperature of the stored log-probs (must equal distill's).")
    logprob_dtype: str = option("--logprob-dtype", default="fp32",
                                help="Storage dtype of the log-probs: fp32, fp16 or bf16 (ids are int32).")
    tokens: int | None = option(  # cache only the first ceil(tokens / seq_len) blocks (default: all)
        "--tokens", default=None, help="Cache only the first ceil(tokens / seq len) blocks (default: all).")
    eval_data: list[Path] = option("--eval-data", default_factory=list,
                                   help="Held-out text: also cache an eval split for distill's val KL (repeatable).")
    eval_samples: int | None = option("--eval-samples", default=None, help="At most this many eval blocks.")
    text_field: str = option("--text-field", default="text", help="Text field of .jsonl/.parquet records.")
    micro_batch_size: int = option("--micro-batch-size", default=4, help="Blocks per teacher forward.")
    max_shard_size: str = option("--max-shard-size", default="2GB", help="Largest shard file (e.g. 2GB, 512MiB).")
    device: str = option("--device", default="auto", help="auto, cpu or cuda.")
    dtype: str = option("--dtype", default="auto",
                        help="Compute dtype of the teacher: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    chunk_size: int | None = option("--chunk-size", default=None,
                                    help="Tokens per chunk when making the top-k (default: 16 MiB fp32 temporaries).")
    overwrite: bool = option("--overwrite", default=False, help="Replace an existing output directory.")


def run_teacher_logits(o: TeacherLogitsOptions, *, progress=None) -> dict:
    """Check, load the teacher, write the cache; return the summary (the `--json` document).

    `progress(split, done_blocks, total_blocks)` (`minitron.progress`) is called after every micro-batch."""
    import json

    from minitron.data import data_fingerprints, load_dataset, parse_data_specs
    from minitron.device import auto_dtype, resolve_device
    from minitron.io import atomic_output_dir, check_output_dir, model_fingerprint, write_provenance
    from minitron.memory import parse_size
    from minitron.models.checkpoint import load_model, open_model_dir, optional_tokenizer

    o.model, o.out = Path(o.model), Path(o.out)
    if o.top_k < 1:
        raise InputError(f"must be >= 1, got {o.top_k}", flag="--top-k")
    if o.temperature <= 0:
        raise InputError(f"must be > 0, got {o.temperature}", flag="--temperature")
    if o.logprob_dtype not in LOGP_DTYPES:
        raise InputError(f"must be one of {', '.join(LOGP_DTYPES)}, got {o.logprob_dtype!r}", flag="--logprob-dtype")
    if o.micro_batch_size < 1:
        raise InputError(f"must be >= 1, got {o.micro_batch_size}", flag="--micro-batch-size")
    if o.tokens is not None and o.tokens < 1:
        raise InputError(f"must be >= 1, got {o.tokens}", flag="--tokens")
    shard_bytes = parse_size(o.max_shard_size, flag="--max-shard-size")
    ckpt = open_model_dir(o.model, "MODEL")
    tok = optional_tokenizer(o.model, "MODEL")
    if tok is None:
        raise InputError(f"{o.model} has no tokenizer files", flag="MODEL")
    check_output_dir(o.out, overwrite=o.overwrite, inputs=[o.model])
    max_pos = ckpt.arch.max_position_embeddings
    from minitron.data import resolve_seq_len

    o.seq_len = resolve_seq_len(o.seq_len, max_pos)
    train = load_dataset(o.data, tok, seq_len=o.seq_len, text_field=o.text_field, flag="--data", max_positions=max_pos)
    if o.tokens is not None:
        train = train.take(math.ceil(o.tokens / o.seq_len))
    splits = {"train": (train, o.data)}
    if o.eval_data:
        ev = load_dataset(o.eval_data, tok, seq_len=o.seq_len, text_field=o.text_field, flag="--eval-data",
                          max_positions=max_pos)  # fmt: skip
        splits["eval"] = (ev.take(o.eval_samples or ev.blocks.shape[0]), o.eval_data)
    device = resolve_device(o.device)
    dtype = auto_dtype(o.dtype, device)
    vocab = int(ckpt.arch.vocab_size)
    k = min(o.top_k, vocab)
    meta = {
        "format": FORMAT, "k": k, "tail": k < vocab, "vocab_size": vocab, "seq_len": o.seq_len,
        "temperature": o.temperature, "ids_dtype": "int32", "logprob_dtype": o.logprob_dtype,
        "bytes_per_token": bytes_per_token(k, k < vocab, o.logprob_dtype), "compute_dtype": dtype,
        "teacher": model_fingerprint(o.model), "tokenizer": tokenizer_fingerprint(tok), "text_field": o.text_field,
    }  # fmt: skip

    teacher = load_model(o.model, dtype=dtype, device=device)
    t0 = time.perf_counter()
    with atomic_output_dir(o.out, overwrite=o.overwrite) as tmp:
        meta["splits"] = {}
        for name, (ds, specs) in splits.items():
            blocks = ds.blocks

            entry = write_split(teacher, blocks, Path(tmp), name, k=k, temperature=o.temperature,
                                logp_dtype=o.logprob_dtype, micro_batch_size=o.micro_batch_size,
                                shard_bytes=shard_bytes, device=device, autocast_dtype=dtype,
                                chunk_size=o.chunk_size, progress=progress)  # fmt: skip
            entry["data"] = [d["sha256"] for d in data_fingerprints(parse_data_specs(specs)[0])]
            entry["masks_sha256"] = None if ds.masks is None else blocks_fingerprint(ds.masks)
            entry["weights"] = ds.weights
            meta["splits"][name] = entry
        wall = time.perf_counter() - t0
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        disk = sum((Path(tmp) / sh["file"]).stat().st_size for s in meta["splits"].values() for sh in s["shards"])
        (Path(tmp) / INDEX_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        summary = {"out_dir": str(o.out), "tokens": tokens, "blocks": {n: s["blocks"] for n, s in meta["splits"].items()},
                   "k": k, "tail": meta["tail"], "bytes_per_token": meta["bytes_per_token"], "bytes_on_disk": disk,
                   "disk_bytes_per_token": disk / max(tokens, 1), "wall_time_s": wall,
                   "tokens_per_second": tokens / wall if wall else None}  # fmt: skip
        options = {k_: v for k_, v in vars(o).items()}
        inputs = {"teacher": {"path": str(o.model), "fingerprint": meta["teacher"]},
                  "data": data_fingerprints(parse_data_specs(o.data)[0]),
                  "eval_data": data_fingerprints(parse_data_specs(o.eval_data)[0]) if o.eval_data else []}  # fmt: skip
        write_provenance(tmp, "teacher-logits", options, inputs=inputs,
                         result=summary | {k_: v for k_, v in meta.items() if k_ != "splits"})  # fmt: skip
    return summary


# ---------------------------------------------------------------------- distill --teacher-logits
def open_for_distill(path: Path, *, teacher: Path, tokenizer, vocab_size: int, seq_len: int, data: list, train,
                     eval_data: list, eval_all, eval_samples: int | None, temperature: float, top_k: int | None,
                     steps: int, global_batch: int):  # fmt: skip
    """Open and check a cache against the distillation asked for; returns (cache, train, evals, eval split).

    `train`, `eval_all`: `minitron.data.Dataset`s of --data and --eval-data. Training uses the cached
    blocks (the first `blocks` of the data); evaluation the cache's eval split with `--eval-data`,
    else the first `eval_samples` (16) cached training blocks, as without a cache.
    """
    from minitron.data import data_fingerprints, mix_eval, parse_data_specs
    from minitron.io import model_fingerprint

    cache = TeacherLogits(path)
    m, where = cache.meta, str(path)
    if cache.seq_len != seq_len:
        raise InputError(f"{where} was written at --seq-len {cache.seq_len}, not {seq_len}", flag=FLAG)
    if cache.vocab_size != vocab_size or m["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise InputError(f"{where} was written with another tokenizer than the student's (token ids differ)", flag=FLAG)
    if m["teacher"] != model_fingerprint(teacher):
        raise InputError(f"{where} was written by another teacher than {teacher} (fingerprint {m['teacher']})",
                         flag=FLAG)  # fmt: skip
    if abs(cache.temperature - temperature) > 1e-12:
        raise InputError(f"{where} holds log-probs at temperature {cache.temperature}, not --temperature "
                         f"{temperature}", flag=FLAG)  # fmt: skip
    if top_k is not None and top_k != cache.k:
        raise InputError(f"{where} holds the top-{cache.k}; drop --top-k or give --top-k {cache.k}", flag=FLAG)
    split = cache.splits["train"]
    if split.data != [d["sha256"] for d in data_fingerprints(parse_data_specs(data)[0])]:
        raise InputError(f"{where} was made from other --data files (their sha256 differ)", flag=FLAG)
    n = split.blocks
    if not _same_blocks(split, train, n):
        raise InputError(f"{where}: its token blocks differ from this data's (another --text-field, mix or chat "
                         "template?)", flag=FLAG)  # fmt: skip
    need = steps * global_batch
    if train.weights is not None:  # a mix samples every source by weight, over its own epochs
        if n != train.blocks.shape[0]:
            raise InputError(f"{where} holds {n} of the mix's {train.blocks.shape[0]} blocks; a weighted mix needs "
                             "them all (write the cache without --tokens)", flag=FLAG)  # fmt: skip
    elif need > n:
        raise InputError(f"{where} holds {n} blocks ({n * seq_len:,} tokens) but {steps} steps x {global_batch} "
                         f"blocks need {need}; it covers {n // global_batch} steps (lower --steps/--tokens or "
                         "cache more data)", flag=FLAG)  # fmt: skip
    train = train.take(n)
    if eval_data:
        ev = cache.splits.get("eval")
        if ev is None:
            raise InputError(f"{where} has no eval split; write it with `teacher-logits --eval-data`", flag=FLAG)
        if ev.data != [d["sha256"] for d in data_fingerprints(parse_data_specs(eval_data)[0])] \
                or not _same_blocks(ev, eval_all, ev.blocks):  # fmt: skip
            raise InputError(f"{where}: its eval split was made from other --eval-data", flag=FLAG)
        return cache, train, eval_all.take(min(ev.blocks, eval_samples or ev.blocks)), "eval"
    return cache, train, mix_eval(train, eval_samples or 16), "train"


def _same_blocks(split, ds, n: int) -> bool:
    """Do the first `n` blocks (and loss masks) of dataset `ds` equal those the split was made from?"""
    if ds.blocks.shape[0] < n or blocks_fingerprint(ds.blocks[:n]) != split.tokens_sha256:
        return False
    masks = None if ds.masks is None else blocks_fingerprint(ds.masks[:n])
    return masks == split.masks_sha256
