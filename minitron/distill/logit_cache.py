"""Cached teacher logits: the teacher's top-k + tail bins per token, written once, read by block.

Layout of a cache directory (written by `minitron teacher-logits`, read by `distill --teacher-logits`):

    DIR/
      index.json                 format, k, temperature, dtypes, bytes per token, the fingerprints
                                 (teacher, tokenizer, data files, the token blocks themselves) and,
                                 per split ("train", optionally "eval"), its shards and block ranges
      train-00000.safetensors    ids [b, L, k] int32 (the teacher's top-k token ids, best first)
                                 logp [b, L, k + 1] (log-probs of those tokens, then of the tail)
      ...
      minitron.json              provenance (command, options, inputs, versions, the same metadata)

Block i of a split is the i-th packed block of the data (`minitron.data.load_blocks`, data order),
so the trainer's step → block indices (`sampling.step_indices`) address the cache directly. Reading
is by slice through safetensors' memory map: only the rows asked for are read, never a whole shard;
each rank reads only its own micro-batches. The bins are renormalised on read (log-softmax over the
k + 1 columns) so a low-precision cache is still a distribution.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from minitron.errors import CheckpointError, InputError
from minitron.progress import report

FORMAT = "minitron-teacher-logits/1"
INDEX_FILE = "index.json"
LOGP_DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}
FLAG = "--teacher-logits"


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a tokenizer as far as token ids go: the token -> id map and the special ids."""
    h = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)};".encode())
    return h.hexdigest()[:16]


def blocks_fingerprint(blocks) -> str:
    """sha256 of the token ids of `blocks` [n, L] (int64, row-major): the exact data a split holds."""
    return hashlib.sha256(blocks.long().contiguous().numpy().tobytes()).hexdigest()[:16]


def bytes_per_token(k: int, tail: bool, logp_dtype: str) -> int:
    return 4 * k + LOGP_DTYPES[logp_dtype] * (k + int(tail))


# ---------------------------------------------------------------------- writing
def write_split(teacher, blocks, out_dir: Path, split: str, *, k: int, temperature: float = 1.0,
                logp_dtype: str = "fp32", micro_batch_size: int = 4, shard_bytes: int = 2 * 10**9,
                device: str = "cpu", autocast_dtype: str | None = None, chunk_size: int | None = None, progress=None) -> dict:  # fmt: skip
    """Run `teacher` over `blocks` [n, L] and write its bins for `split` as shards into `out_dir`.

    One teacher forward per micro-batch; the bins are made `chunk` tokens at a time (no [tokens, V]
    fp32 copy beyond one chunk), gathered into a shard buffer and written when the shard is full.
    Returns the split's index entry.
    """
    import torch
    from safetensors.torch import save_file

    from minitron.distill.teacher import autocast
    from minitron.dtypes import torch_dtype
    from minitron.losses.divergence import auto_chunk
    from minitron.losses.topk import teacher_bins

    n, seq_len = blocks.shape
    v = int(teacher.config.vocab_size)
    k_eff = min(k, v)
    tail = k_eff < v
    cols = k_eff + int(tail)
    per_block = seq_len * bytes_per_token(k_eff, tail, logp_dtype)
    shard_blocks = max(1, int(shard_bytes // per_block))
    store = torch_dtype(logp_dtype)
    shards, buf_ids, buf_logp, start, filled = [], None, None, 0, 0

    def flush():
        nonlocal buf_ids, buf_logp, start, filled
        if not filled:
            return
        name = f"{split}-{len(shards):05d}.safetensors"
        save_file({"ids": buf_ids[:filled].contiguous(), "logp": buf_logp[:filled].contiguous()},
                  str(out_dir / name), metadata={"format": FORMAT, "split": split, "start": str(start)})  # fmt: skip
        shards.append({"file": name, "start": start, "blocks": filled})
        start += filled
        buf_ids = buf_logp = None
        filled = 0

    teacher.eval()
    for a in range(0, n, micro_batch_size):
        ids = blocks[a : a + micro_batch_size].to(device)
        with torch.no_grad(), autocast(device, autocast_dtype):
            logits = teacher(input_ids=ids, use_cache=False).logits  # [b, L, V]
        with torch.no_grad():
            rows = logits.reshape(-1, v)
            chunk = auto_chunk(v, chunk_size)
            out_ids = torch.empty(rows.shape[0], k_eff, dtype=torch.int32)
            out_logp = torch.empty(rows.shape[0], cols, dtype=store)
            for c in range(0, rows.shape[0], chunk):
                top_ids, log_p = teacher_bins(rows[c : c + chunk], temperature, k_eff)
                out_ids[c : c + chunk] = top_ids.to("cpu", torch.int32)
                out_logp[c : c + chunk] = log_p.to("cpu", store)
            del logits, rows
        b = ids.shape[0]
        out_ids, out_logp = out_ids.view(b, seq_len, k_eff), out_logp.view(b, seq_len, cols)
        i = 0
        while i < b:
            if buf_ids is None:
                size = min(shard_blocks, n - start)
                buf_ids = torch.empty(size, seq_len, k_eff, dtype=torch.int32)
                buf_logp = torch.empty(size, seq_len, cols, dtype=store)
            take = min(b - i, buf_ids.shape[0] - filled)
            buf_ids[filled : filled + take] = out_ids[i : i + take]
            buf_logp[filled : filled + take] = out_logp[i : i + take]
            filled += take
            i += take
            if filled == buf_ids.shape[0]:
                flush()
        report(progress, split, min(a + micro_batch_size, n), n)
    flush()
    return {"blocks": n, "tokens": n * seq_len, "tokens_sha256": blocks_fingerprint(blocks), "shards": shards,
            "k": k_eff, "tail": tail}  # fmt: skip


# ---------------------------------------------------------------------- reading
@dataclass
class Split:
    name: str
    blocks: int
    tokens_sha256: str
    data: list  # sha256 of each data file, in order
    shards: list  # [{"file", "start", "blocks"}]
    masks_sha256: str | None = None  # the loss masks of chat data (None: every token counts)


class TeacherLogits:
    """A cache directory opened for reading: validated up front, then read by block index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        p = self.path
        if not p.is_dir():
            raise InputError(f"no such directory: {p}", flag=FLAG)
        index = p / INDEX_FILE
        if not index.is_file():
            raise InputError(f"{p} is not a teacher-logits cache (no {INDEX_FILE}; make one with "
                             "`minitron teacher-logits`)", flag=FLAG)  # fmt: skip
        try:
            doc = json.loads(index.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{index} is not valid JSON", flag=FLAG) from None
        if doc.get("format") != FORMAT:
            raise InputError(f"{index}: unknown format {doc.get('format')!r} (expected {FORMAT})", flag=FLAG)
        self.meta = doc
        self.k, self.tail, self.seq_len = int(doc["k"]), bool(doc["tail"]), int(doc["seq_len"])
        self.vocab_size, self.temperature = int(doc["vocab_size"]), float(doc["temperature"])
        self.splits = {name: Split(name, int(s["blocks"]), s["tokens_sha256"], list(s["data"]), list(s["shards"]),
                                   s.get("masks_sha256")) for name, s in doc["splits"].items()}  # fmt: skip
        self._handles: dict = {}
        for split in self.splits.values():
            self._check_shards(split)

    def _check_shards(self, split: Split) -> None:
        from minitron.models.safetensors_io import read_header as read_safetensors_header

        at = 0
        cols = self.k + int(self.tail)
        for sh in split.shards:
            f = self.path / sh["file"]
            if not f.is_file():
                raise InputError(f"{self.path}: shard {sh['file']} is missing", flag=FLAG)
            try:
                header = read_safetensors_header(f)
            except CheckpointError as e:
                raise InputError(f"{self.path}: {e}", flag=FLAG) from None
            want = {"ids": [sh["blocks"], self.seq_len, self.k], "logp": [sh["blocks"], self.seq_len, cols]}
            for key, shape in want.items():
                if key not in header or header[key]["shape"] != shape:
                    raise InputError(f"{self.path}: shard {sh['file']} does not hold {key} {shape}", flag=FLAG)
            if sh["start"] != at:
                raise InputError(f"{self.path}: {INDEX_FILE} has a gap before {sh['file']}", flag=FLAG)
            at += sh["blocks"]
        if at != split.blocks:
            raise InputError(f"{self.path}: the {split.name} shards hold {at} blocks, the index says {split.blocks}",
                             flag=FLAG)  # fmt: skip

    @property
    def bytes_per_token(self) -> int:
        return int(self.meta["bytes_per_token"])

    def _open(self, file: str):
        from safetensors import safe_open

        h = self._handles.get(file)
        if h is None:
            h = self._handles[file] = safe_open(str(self.path / file), framework="pt")
        return h

    def read(self, split: str, idx: list[int]):
        """(ids [b, L, k] long, log_p [b, L, k + tail] fp32) of blocks `idx` of `split`."""
        import torch

        s = self.splits[split]
        ids, logp = [], []
        for i in idx:
            if not 0 <= i < s.blocks:
                raise IndexError(f"block {i} outside the {s.blocks} blocks of split {split!r}")
            sh = next(x for x in s.shards if x["start"] <= i < x["start"] + x["blocks"])
            h, r = self._open(sh["file"]), i - sh["start"]
            ids.append(h.get_slice("ids")[r : r + 1])
            logp.append(h.get_slice("logp")[r : r + 1])
        log_p = torch.cat(logp).float()
        log_p = log_p - log_p.logsumexp(-1, keepdim=True)  # renormalise (a low-precision cache still sums to 1)
        return torch.cat(ids).long(), log_p

    def steps_covered(self, global_batch: int) -> int:
        return self.splits["train"].blocks // global_batch


def describe(meta: dict) -> str:
    """One line: what a cache holds (for logs)."""
    t = meta["splits"]["train"]
    return (f"{t['blocks']} blocks x {meta['seq_len']} tokens, top-{meta['k']}{' + tail' if meta['tail'] else ''}, "
            f"{meta['bytes_per_token']} bytes/token ({math.ceil(t['tokens'] * meta['bytes_per_token'] / 2**20)} MiB)")  # fmt: skip
