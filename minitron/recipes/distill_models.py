"""Loading the two models of `minitron distill`: the teacher frozen in the compute dtype, the student
in fp32 master weights, wrapped for DDP or FSDP (each rank reading only its shards)."""

from __future__ import annotations

from minitron import distributed as dist

FSDP_LOADS = ("sharded", "full")


def load_models(p):
    """Teacher in the compute dtype (frozen); student in fp32 master weights; wrapped for DDP/FSDP.

    Under `--fsdp` each model is built on the meta device, sharded, and each rank reads only its own
    shards (`sharded_load`); `--fsdp-load full` keeps the former path (every rank loads the whole
    checkpoint on CPU, then shards it), the reference the sharded path is tested against."""
    import torch

    if p.opts.fsdp:
        return load_fsdp(p)
    from minitron.models.checkpoint import load_model

    if p.cache is not None:  # cached teacher logits: no teacher model at all
        from minitron.distill.teacher import CachedTeacher

        teacher = CachedTeacher(p.cache, p.eval_split)
    else:
        teacher = load_model(p.opts.teacher, dtype=p.dtype, device=p.device)
    student = load_model(p.opts.student, dtype="fp32", device=p.device)
    prepare_student(student, p.opts.gradient_checkpointing)
    if dist.world_size() > 1:
        ids = [torch.device(p.device).index] if p.device.startswith("cuda") else None
        student = torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)
    return teacher, student


def prepare_student(student, gradient_checkpointing: bool) -> None:
    if gradient_checkpointing:
        if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name goes in v6
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.config.use_cache = False


def load_fsdp(p):
    from minitron.distill.parallel import fsdp_wrap
    from minitron.distill.sharded_load import load_sharded
    from minitron.distill.teacher import CachedTeacher
    from minitron.models.checkpoint import load_model

    def load(path, dtype, prepare=None, frozen=False):
        if p.opts.fsdp_load == "full":  # the whole checkpoint on every rank's CPU, then sharded
            model = load_model(path, dtype=dtype, device="cpu")
            if prepare:
                prepare(model)
            return fsdp_wrap(model, p.device, frozen=frozen)

        def wrap(model):
            if prepare:
                prepare(model)
            fsdp_wrap(model, p.device, frozen=frozen)

        return load_sharded(path, dtype=dtype, device=p.device, wrap=wrap)

    if p.cache is not None:  # cached teacher logits: no teacher model at all
        teacher = CachedTeacher(p.cache, p.eval_split)
    else:
        teacher = load(p.opts.teacher, p.dtype, frozen=True)
    student = load(p.opts.student, "fp32", lambda m: prepare_student(m, p.opts.gradient_checkpointing))
    return teacher, student
