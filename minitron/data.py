"""Text data for scoring, distillation and evaluation: load, tokenise, pack into fixed-length blocks.

Formats, chosen by extension: `.txt` (one document per file), `.jsonl` / `.json` lines (the
`--text-field` of each record, default `text`), `.parquet` (the same column). Documents are tokenised
without special tokens, joined with the tokenizer's EOS id between them (`sep_eos=True`, the default
for training and scoring) and cut into non-overlapping blocks of `seq_len` tokens; the remainder is
dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from minitron.errors import InputError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def _check_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise InputError(f"no such file: {path}", flag=flag)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give data files", flag=flag)
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty", flag=flag)


def _read_text(path: Path, flag: str) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise InputError(f"{path} looks binary (NUL bytes); expected UTF-8 text", flag=flag)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text", flag=flag) from None


def read_documents(paths: Sequence[str | Path], *, text_field: str = "text", flag: str = "--data") -> list[str]:
    """All documents of all files, in order; errors name the file and the flag."""
    if not paths:
        raise InputError("no data files given", flag=flag)
    docs: list[str] = []
    for p in map(Path, paths):
        _check_file(p, flag)
        suffix = p.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            docs += _read_parquet(p, text_field, flag)
        elif suffix in JSONL_SUFFIXES:
            docs += _read_jsonl(p, text_field, flag)
        else:
            docs.append(_read_text(p, flag))
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise InputError(f"no text in {', '.join(map(str, paths))}", flag=flag)
    return docs


def _read_jsonl(path: Path, field: str, flag: str) -> list[str]:
    text = _read_text(path, flag)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{n}: not valid JSON", flag=flag) from None
        if isinstance(rec, str):
            out.append(rec)
            continue
        if not isinstance(rec, dict) or field not in rec:
            raise InputError(f"{path}:{n}: no {field!r} field (set --text-field)", flag=flag)
        if not isinstance(rec[field], str):
            raise InputError(f"{path}:{n}: field {field!r} is not a string", flag=flag)
        out.append(rec[field])
    return out


def _read_parquet(path: Path, field: str, flag: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[field])
    except KeyError:
        raise InputError(f"{path}: no column {field!r} (set --text-field)", flag=flag) from None
    except Exception as e:  # pyarrow raises many types for a corrupt file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if field in msg and ("No match" in msg or "not found" in msg.lower()):
            raise InputError(f"{path}: no column {field!r} (set --text-field)", flag=flag) from None
        raise InputError(f"{path}: cannot read parquet ({msg})", flag=flag) from None
    return [t for t in table.column(field).to_pylist() if isinstance(t, str)]


def tokenize_documents(docs: Iterable[str], tokenizer, *, sep_eos: bool = True) -> list[int]:
    """One flat token stream: each document without special tokens, EOS between documents."""
    eos = tokenizer.eos_token_id if sep_eos else None
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"]
        if eos is not None:
            stream.append(eos)
    return stream


def pack(stream: Sequence[int], seq_len: int):
    """[n_blocks, seq_len] LongTensor of non-overlapping blocks; the remainder is dropped."""
    import torch

    if seq_len < 2:
        raise InputError(f"must be at least 2, got {seq_len}", flag="--seq-len")
    n = len(stream) // seq_len
    t = torch.tensor(list(stream[: n * seq_len]), dtype=torch.long)
    return t.view(n, seq_len)


DEFAULT_SEQ_LEN = 2048  # every command's --seq-len default: min(this, max_position_embeddings)


def resolve_seq_len(seq_len: int | None, max_positions: int | None, flag: str = "--seq-len") -> int:
    """`--seq-len` as every command reads it: default min(2048, max_position_embeddings); above the
    model's positions refused (the model was never trained on them)."""
    limit = max_positions or 1 << 30
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit)
    if seq_len < 2:
        raise InputError(f"must be at least 2, got {seq_len}", flag=flag)
    if seq_len > limit:
        raise InputError(f"{seq_len} exceeds the model's max_position_embeddings ({limit})", flag=flag)
    return seq_len


def load_blocks(
    paths: Sequence[str | Path],
    tokenizer,
    *,
    seq_len: int,
    samples: int | None = None,
    text_field: str = "text",
    sep_eos: bool = True,
    seed: int | None = None,
    flag: str = "--data",
    max_positions: int | None = None,
):
    """Read, tokenise and pack; take `samples` blocks (all when None).

    With `seed`, the blocks taken are a seeded random subset (in data order); without, the first
    `samples`. Too little text for the samples asked is an error that says how many blocks the data gives.
    """
    import torch

    if samples is not None and samples < 1:
        raise InputError(f"must be >= 1, got {samples}", flag="--samples")
    if seq_len < 2:
        raise InputError(f"must be at least 2, got {seq_len}", flag="--seq-len")
    if max_positions is not None and seq_len > max_positions:
        raise InputError(f"{seq_len} exceeds the model's max_position_embeddings ({max_positions})", flag="--seq-len")
    blocks = pack(tokenize_documents(read_documents(paths, text_field=text_field, flag=flag), tokenizer,
                                     sep_eos=sep_eos), seq_len)
    n = blocks.shape[0]
    if n == 0 or (samples is not None and n < samples):
        want = samples if samples is not None else 1
        raise InputError(
            f"the data gives {n} block(s) of {seq_len} tokens but {want} were asked for "
            f"(add data, or lower --samples / --seq-len)",
            flag=flag,
        )
    if samples is None or samples == n:
        return blocks
    if seed is None:
        return blocks[:samples]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:samples].sort().values
    return blocks[idx]


def data_fingerprints(paths: Sequence[str | Path]) -> list[dict]:
    """Provenance of data files: path, size and sha256."""
    from minitron.io import file_sha256

    return [{"path": str(p), "bytes": Path(p).stat().st_size, "sha256": file_sha256(p)} for p in paths]
