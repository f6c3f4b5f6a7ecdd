"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for a Nemotron-H model: one unit per decoder block.

Each block of `model.model.layers` becomes its own FSDP unit (its parameters are gathered just for
its forward/backward), then the root (embedding, final norm, lm_head). Both the student and the
frozen teacher are sharded, so a 12B teacher and a 9B student fit on devices that hold neither.
A model on the meta device is sharded as it is (its shards are allocated and read by `sharded_load`).

FSDP2 keeps a root unit gathered after its forward (a training step gathers it again at once for the
backward). The frozen teacher has no backward, so its root would stay gathered for the whole run
(embedding + lm_head: 2.5 GiB bf16 per device for a 12B teacher): `frozen=True` reshards it after
every forward instead.
"""

from __future__ import annotations


def fsdp_wrap(model, device: str, *, frozen: bool = False):
    """Shard `model` over all ranks in place (FSDP2) and return it; parameters become DTensors."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from minitron import distributed as dist

    kind = torch.device(device).type
    mesh = init_device_mesh(kind, (dist.world_size(),))
    if kind == "cuda" and not any(t.is_meta for t in model.parameters()):  # meta: `sharded_load` allocates
        model.to(device)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True if frozen else None)
    return model
