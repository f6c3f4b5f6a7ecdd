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
from dataclasses import dataclass
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


# ---------------------------------------------------------------------- chat rows, loss masks, weighted mixes
# A dataset for distillation: blocks, the loss mask of chat data (True: a token the loss counts, i.e.
# an assistant token), and where each source's blocks are in the tensor (weighted mixes pack every
# source on its own, so a block never straddles two sources).


def parse_data_spec(spec: str | Path, flag: str = "--data") -> tuple[Path, float | None]:
    """`path` or `path:weight` -> (path, weight or None). A path that exists as written is never split."""
    text = str(spec)
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    path, _, w = text.rpartition(":")
    try:
        weight = float(w)
    except ValueError:
        raise InputError(f"{text}: the weight after ':' ({w!r}) is not a number (e.g. train.jsonl:0.7)", flag=flag) from None
    if not weight > 0 or weight != weight or weight == float("inf"):
        raise InputError(f"{text}: the weight must be a positive number, got {w}", flag=flag)
    return Path(path), weight


def parse_data_specs(specs: Sequence[str | Path], flag: str = "--data") -> tuple[list[Path], list[float] | None]:
    """Paths and their weights (None when no spec has one); weights on some but not all is an error."""
    parsed = [parse_data_spec(s, flag) for s in specs]
    weights = [w for _, w in parsed]
    if all(w is None for w in weights):
        return [p for p, _ in parsed], None
    if any(w is None for w in weights):
        raise InputError("give a weight to every file of a mix or to none (e.g. a.jsonl:0.7 b.txt:0.3)", flag=flag)
    return [p for p, _ in parsed], weights


def _check_messages(rec, path: Path, n: int, flag: str) -> list:
    msgs = rec.get("messages") if isinstance(rec, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise InputError(f"{path}:{n}: no 'messages' list (the file holds chat rows: role/content messages)", flag=flag)
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"{path}:{n}: every message needs a string 'role' and 'content'", flag=flag)
    return msgs


def read_records(path: Path, *, text_field: str = "text", flag: str = "--data") -> list:
    """The documents of one file: strings, or message lists for a chat .jsonl (its first row has `messages`)."""
    path = Path(path)
    _check_file(path, flag)
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return read_documents([path], text_field=text_field, flag=flag)
    rows = []
    for n, line in enumerate(_read_text(path, flag).splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError:
                raise InputError(f"{path}:{n}: not valid JSON", flag=flag) from None
    if rows and isinstance(rows[0][1], dict) and "messages" in rows[0][1]:
        return [_check_messages(rec, path, n, flag) for n, rec in rows]
    return read_documents([path], text_field=text_field, flag=flag)


def render_chat(messages: list, tokenizer, *, where: str = "", flag: str = "--data") -> tuple[list[int], list[bool]]:
    """Token ids of a conversation rendered with the tokenizer's chat template, and the mask of the
    tokens the loss counts: those of assistant turns (from the end of the assistant header the
    template writes to the end of the turn, end-of-turn marker included)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise InputError(f"the tokenizer {name} has no chat template, needed for the chat rows of {where}", flag=flag)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        turn = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if text.startswith(turn) and turn.startswith(head):
            spans.append((len(head), len(turn)))
        else:  # a template that renders prefixes differently: fall back to the content itself
            at = text.find(m["content"], spans[-1][1] if spans else 0)
            if at >= 0:
                spans.append((at, at + len(m["content"])))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a <= s < b for a, b in spans) for s, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def tokenize_with_masks(records: Iterable, tokenizer, *, sep_eos: bool = True, where: str = "", flag: str = "--data"):
    """(stream, mask): text documents count everywhere; chat documents only on assistant tokens; EOS
    between documents (counted after text, not after a chat)."""
    eos = tokenizer.eos_token_id if sep_eos else None
    stream: list[int] = []
    mask: list[bool] = []
    for rec in records:
        if isinstance(rec, str):
            ids = tokenizer(rec, add_special_tokens=False)["input_ids"]
            m = [True] * len(ids)
        else:
            ids, m = render_chat(rec, tokenizer, where=where, flag=flag)
        stream += ids
        mask += m
        if eos is not None:
            stream.append(eos)
            mask.append(isinstance(rec, str))
    return stream, mask


@dataclass
class Dataset:
    blocks: object  # [n, L] LongTensor
    masks: object | None  # [n, L] bool (True: the loss counts the token), None when every token counts
    sources: list  # [{"path", "start", "blocks", "weight"}], in order
    weights: list[float] | None  # normalised mix weights, None: no mix

    def take(self, n: int) -> Dataset:
        """The first `n` blocks (sources clipped)."""
        src = [s | {"blocks": max(0, min(s["blocks"], n - s["start"]))} for s in self.sources]
        return Dataset(self.blocks[:n], None if self.masks is None else self.masks[:n], src, self.weights)


def load_dataset(specs: Sequence[str | Path], tokenizer, *, seq_len: int, text_field: str = "text",
                 flag: str = "--data", max_positions: int | None = None) -> Dataset:  # fmt: skip
    """Blocks of `specs` (`path` or `path:weight`): without weights, every file in one stream (as
    `load_blocks`); with weights, each file packed on its own. Chat rows carry a loss mask."""
    import torch

    if seq_len < 2:
        raise InputError(f"must be at least 2, got {seq_len}", flag="--seq-len")
    if max_positions is not None and seq_len > max_positions:
        raise InputError(f"{seq_len} exceeds the model's max_position_embeddings ({max_positions})", flag="--seq-len")
    paths, weights = parse_data_specs(specs, flag)
    if not paths:
        raise InputError("no data files given", flag=flag)
    groups = [paths] if weights is None else [[p] for p in paths]
    blocks, masks, sources, any_chat = [], [], [], False
    for group in groups:
        records = [r for p in group for r in read_records(p, text_field=text_field, flag=flag)]
        any_chat |= any(not isinstance(r, str) for r in records)
        where = ", ".join(map(str, group))
        stream, mask = tokenize_with_masks(records, tokenizer, where=where, flag=flag)
        n = len(stream) // seq_len
        if n == 0:
            raise InputError(f"{where} gives no block of {seq_len} tokens (add data, or lower --seq-len)", flag=flag)
        blocks.append(torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len))
        masks.append(torch.tensor(mask[: n * seq_len], dtype=torch.bool).view(n, seq_len))
        start = sum(s["blocks"] for s in sources)
        sources.append({"path": where, "start": start, "blocks": n, "weight": None if weights is None else
                        weights[len(sources)]})  # fmt: skip
    total = sum(weights) if weights else None
    return Dataset(torch.cat(blocks), torch.cat(masks) if any_chat else None, sources,
                   None if weights is None else [w / total for w in weights])  # fmt: skip


def mix_eval(ds: Dataset, samples: int | None) -> Dataset:
    """Evaluation blocks of a dataset: the first `samples` (all), or for a mix the first blocks of each
    source in proportion to the weights."""
    import torch

    if ds.weights is None:
        return ds.take(samples or ds.blocks.shape[0])
    n = samples or ds.blocks.shape[0]
    idx, src, at = [], [], 0
    for s, w in zip(ds.sources, ds.weights, strict=True):
        take = max(1, min(s["blocks"], round(w * n)))
        idx += range(s["start"], s["start"] + take)
        src.append(s | {"start": at, "blocks": take})
        at += take
    sel = torch.tensor(idx)
    return Dataset(ds.blocks[sel], None if ds.masks is None else ds.masks[sel], src, ds.weights)
