"""torch.distributed under torchrun: process-group setup and the few collectives minitron needs.

Run any command as `torchrun --nproc-per-node N -m minitron <command> ...`; without torchrun's
environment variables everything here degrades to a single process (rank 0 of 1).
The backend is NCCL when each rank has a GPU, gloo otherwise (CPU tests use gloo).
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(device: str = "cpu") -> bool:
    """Initialise the default process group when launched by torchrun; True when distributed."""
    import torch
    import torch.distributed as dist

    if not launched_by_torchrun() or is_initialized():
        return is_initialized()
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    import torch.distributed as dist

    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def session(device: str = "cpu"):
    """`with session(device): ...` initialises under torchrun and always tears down."""
    started = init(device)
    try:
        yield started
    finally:
        if started:
            shutdown()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: str) -> str:
    """`cuda` -> `cuda:<LOCAL_RANK>` under torchrun; anything else unchanged."""
    if device == "cuda" and launched_by_torchrun():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def barrier() -> None:
    import torch.distributed as dist

    if is_initialized():
        dist.barrier()


def all_reduce_sum(t):
    """Sum a tensor over ranks in place (no-op in one process); returns it."""
    import torch.distributed as dist

    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard_range(n: int, r: int | None = None, ws: int | None = None) -> range:
    """The contiguous slice of `n` items that rank `r` of `ws` handles (ranks differ by at most one)."""
    r = rank() if r is None else r
    ws = world_size() if ws is None else ws
    per, extra = divmod(n, ws)
    start = r * per + min(r, extra)
    return range(start, start + per + (1 if r < extra else 0))


def broadcast_object(obj, src: int = 0):
    import torch.distributed as dist

    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
