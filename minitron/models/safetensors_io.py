"""The safetensors container, read and written byte by byte where the library's API does not reach.

Layout: an 8-byte little-endian header length, the JSON header (space-padded to a multiple of 8:
tensor name -> dtype code, shape, byte offsets in the data section; `__metadata__`), then the data.

`read_header` (checked against the file's size) serves checkpoints and the teacher-logit cache;
`header_length` the FSDP row reader and the model fingerprint; `encode_header` the streaming
prune's shards and `write_file` (deterministic: sorted names and metadata) the scores.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from minitron.dtypes import safetensors_code
from minitron.errors import CheckpointError


def header_length(f) -> int:
    """The JSON header's length in bytes, read from the start of an open binary file (the data follows)."""
    (n,) = struct.unpack("<Q", f.read(8))
    return n


def read_header(path: Path) -> dict:
    """The JSON header of a .safetensors file, checked against the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path.name}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)  # little-endian u64: the header's length
            if n > 100 * 2**20:
                raise CheckpointError(f"{path.name}: corrupt safetensors header (claims {n} bytes)")
            if n > size - 8:
                raise CheckpointError(
                    f"{path.name}: truncated safetensors file (header of {n} bytes, file of {size} bytes)"
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path.name}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path.name}: corrupt safetensors header") from None
    data_len = size - 8 - n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        end = meta.get("data_offsets", [0, 0])[1]
        if end > data_len:
            raise CheckpointError(
                f"{path.name}: truncated: tensor {key} ends at byte {end} of a {data_len}-byte data section"
            )
    return header


def encode_header(entries: dict, metadata: dict | None = None) -> bytes:
    """Length prefix + JSON header (space-padded to 8 bytes) for `entries` in the order given."""
    header = {"__metadata__": metadata} if metadata else {}
    header.update(entries)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_file(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """A safetensors file with a deterministic header (the library orders metadata by hash): tensors in
    sorted-name order, metadata keys sorted."""
    import torch

    entries, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        entries[name] = {"dtype": safetensors_code(t.dtype), "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    with open(path, "wb") as f:
        f.write(encode_header(entries, dict(sorted((metadata or {}).items())) or None))
        for raw in blobs:
            f.write(raw)
