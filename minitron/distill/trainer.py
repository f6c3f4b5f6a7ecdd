"""The distillation loop: a frozen teacher, a training student, AdamW, a schedule, evaluation.

In-memory only: models and token blocks in, metrics out; files (checkpoints, metrics.jsonl, the
final model) are the business of `minitron.recipes.distill`, which calls `Trainer.train` with callbacks.

One optimiser step reads `global_batch_size` blocks. Under torchrun each of the `world` ranks takes
a contiguous `global / world` share of them, in micro-batches of `micro_batch_size`, so gradient
accumulation is `global / (world * micro)` micro-batches. Each micro-batch's loss is a *sum* over its
tokens divided by the tokens of the whole global batch (times `world`, since DDP and FSDP average
gradients over ranks): the gradient is the same whatever the split, and a 2-process run equals the
1-process run with the same global batch up to float summation order.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from minitron import distributed as dist
from minitron.distill.sampling import Mix, Uniform, rank_micro_batches
from minitron.distill.schedule import SCHEDULES, Schedule
from minitron.distill.teacher import (  # noqa: F401 (evaluate: re-exported, the stable import path)
    ResidentTeacher,
    as_teacher,
    autocast,
    evaluate,
    kd_loss,
    kl_mask,
    logits_of,
    reduce_sum,
)
from minitron.errors import InputError
from minitron.losses.divergence import DEFAULT_CHUNK, check_kind, lm_loss
from minitron.options import option


@dataclass
class TrainConfig:
    """The optimisation of `minitron distill`; each field with a flag is that command's option."""

    steps: int = option("--steps", type=int | None, cli_default=None, help="Optimiser steps (or give --tokens).")
    micro_batch_size: int = option("--micro-batch-size", default=4, help="Blocks per forward pass per process.")
    # None: micro_batch_size x world size (no accumulation)
    global_batch_size: int | None = option(
        "--global-batch-size", default=None,
        help="Blocks per optimiser step over all processes; gradient accumulation follows (default: micro x processes).")
    lr: float = option("--lr", default=1e-4, help="Peak learning rate.")
    min_lr: float | None = option("--min-lr", default=None, help="Final learning rate (default lr/10).")
    warmup_steps: int = option("--warmup-steps", default=0, help="Linear warmup steps.")
    schedule: str = option("--schedule", default="wsd", help="wsd, cosine or constant.")
    weight_decay: float = option("--weight-decay", default=0.0, help="AdamW weight decay (matrices only).")
    adam_beta1: float = option("--adam-beta1", default=0.9,
                               help="AdamW's first-moment decay (momentum); short runs recover faster at 0.7.")
    adam_beta2: float = option("--adam-beta2", default=0.95, help="AdamW's second-moment decay.")
    clip: float | None = option("--clip", default=1.0, type=float, parse=lambda v: v or None,  # None or 0: no clipping
                                help="Gradient-norm clip (0: none).")
    loss: str = option("--loss", default="forward-kl", help="forward-kl, reverse-kl or jsd.")
    temperature: float = option("--temperature", default=1.0, help="Softmax temperature of both models.")
    top_k: int | None = option("--top-k", default=None, help="Restrict the loss to the teacher's top-k tokens.")
    ce_weight: float = option("--ce-weight", default=0.0, help="Weight of the student's LM loss mixed in.")
    intermediate_weight: float = option(  # Minitron's L_is (minitron.distill.intermediate)
        "--intermediate-weight", default=0.0,
        help="Weight of the intermediate-state loss: the student's stream after each layer vs the teacher's "
             "(its kept layers, carried into the student's hidden basis); 0: logits only.")
    eval_every: int = option("--eval-every", default=0, help="Evaluate every N steps (0: start and end only).")
    eval_batch_size: int | None = None
    seed: int = option("--seed", default=0, help="Seed of the data order.")
    # tokens per loss chunk; None: auto (16 MiB fp32 temporaries)
    chunk_size: int | None = option(
        "--chunk-size", default=DEFAULT_CHUNK,
        help="Tokens per chunk of the loss (default: 16 MiB fp32 temporaries, 32 tokens at vocab 131072).")
    autocast_dtype: str | None = None  # bf16/fp16: forward passes under torch.autocast

    def validate(self, world: int = 1) -> TrainConfig:
        def need(ok, msg, flag):
            if not ok:
                raise InputError(msg, flag=flag)

        need(self.steps >= 1, f"must be >= 1, got {self.steps}", "--steps")
        need(self.micro_batch_size >= 1, f"must be >= 1, got {self.micro_batch_size}", "--micro-batch-size")
        g = self.global_batch_size if self.global_batch_size is not None else self.micro_batch_size * world
        need(g >= 1, f"must be >= 1, got {g}", "--global-batch-size")
        need(g % (self.micro_batch_size * world) == 0,
             f"{g} is not a multiple of --micro-batch-size ({self.micro_batch_size}) x processes ({world})",
             "--global-batch-size")  # fmt: skip
        need(self.lr > 0, f"must be > 0, got {self.lr}", "--lr")
        need(self.min_lr is None or 0 <= self.min_lr <= self.lr, f"must be in [0, --lr], got {self.min_lr}", "--min-lr")
        need(0 <= self.warmup_steps <= self.steps, f"must be in [0, --steps], got {self.warmup_steps}", "--warmup-steps")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r} (expected {', '.join(SCHEDULES)})",
             "--schedule")  # fmt: skip
        need(self.weight_decay >= 0, f"must be >= 0, got {self.weight_decay}", "--weight-decay")
        for name, flag in (("adam_beta1", "--adam-beta1"), ("adam_beta2", "--adam-beta2")):
            v = getattr(self, name)
            need(0 <= v < 1, f"must be in [0, 1), got {v}", flag)
        need(self.clip is None or self.clip >= 0, f"must be >= 0, got {self.clip}", "--clip")
        check_kind(self.loss)
        need(self.temperature > 0, f"must be > 0, got {self.temperature}", "--temperature")
        need(self.top_k is None or self.top_k >= 1, f"must be >= 1, got {self.top_k}", "--top-k")
        need(self.ce_weight >= 0, f"must be >= 0, got {self.ce_weight}", "--ce-weight")
        need(self.intermediate_weight >= 0 and math.isfinite(self.intermediate_weight),
             f"must be a finite number >= 0, got {self.intermediate_weight}", "--intermediate-weight")  # fmt: skip
        need(self.eval_every >= 0, f"must be >= 0, got {self.eval_every}", "--eval-every")
        need(self.chunk_size is None or self.chunk_size >= 1, f"must be >= 1, got {self.chunk_size}", "--chunk-size")
        self.global_batch_size = g
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- helpers
def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unshare(teacher, student) -> None:
    """Give the student its own copy of any tensor it shares with the teacher (e.g. a pruned model
    whose kept tensors are views of the original): training must never write into the teacher."""
    def storage(p):
        try:
            return p.untyped_storage().data_ptr() if p.device.type != "meta" else None
        except RuntimeError:  # FSDP2 DTensor shards: their own memory, never shared
            return None

    teacher_storages = {storage(p) for p in teacher.parameters()} - {None}
    with torch.no_grad():
        for p in student.parameters():
            if storage(p) in teacher_storages:
                p.data = p.data.clone()


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Owns the optimiser, schedule and position of one distillation run (models are given)."""

    def __init__(self, teacher, student, train_blocks: torch.Tensor, eval_blocks: torch.Tensor | None,
                 cfg: TrainConfig, *, device: str = "cpu", fsdp: bool = False, train_masks: torch.Tensor | None = None,
                 eval_masks: torch.Tensor | None = None, order=None, layer_map: list[int] | None = None):  # fmt: skip
        """`teacher`: a model (resident) or a `CachedTeacher`; `train_masks` / `eval_masks` [n, L] bool:
        the tokens that count as targets (chat data: assistant tokens), None for all; `order`: which
        blocks each step reads (`sampling.Uniform` by default, `sampling.Mix` for a weighted mix);
        `layer_map`: the teacher layer of each student layer, for `intermediate_weight` (default: the
        identity, which needs as many layers)."""
        self.world, self.rank = dist.world_size(), dist.rank()
        self.cfg = cfg.validate(self.world)
        self.device, self.fsdp = device, fsdp
        self.source = as_teacher(teacher)
        self.teacher = self.source.model if isinstance(self.source, ResidentTeacher) else None
        self.student = student  # plain, DDP- or FSDP2-wrapped module
        self.train_blocks, self.eval_blocks = train_blocks, eval_blocks
        self.train_masks, self.eval_masks = train_masks, eval_masks
        if train_blocks.shape[0] < 1:
            raise InputError("no training blocks", flag="--data")
        self.seq_len = int(train_blocks.shape[1])
        self.order = order if order is not None else Uniform(int(train_blocks.shape[0]), self.cfg.seed)
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            _unshare(self.teacher, self.student)
        self.student.train()
        params = [p for p in self.student.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        # One AdamW implementation (torch's default) for every layout, so that 1 process, DDP and FSDP2
        # agree to the last bit (the fused kernel rounds differently and does not take DTensors).
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8,
        )  # fmt: skip
        self.schedule = Schedule(cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.schedule)
        self.step = 0
        self.initial_eval: dict | None = None
        self.final_eval: dict | None = None
        self.last_metrics: dict = {}
        self.train_time = 0.0
        self.trained_tokens = 0  # tokens trained in this session (tokens/s)
        self.intermediate = self._intermediate(layer_map) if cfg.intermediate_weight > 0 else None

    def _intermediate(self, layer_map):
        """The L_is term: its layer map, the hidden map from the embeddings, c_j from the run's first block."""
        from minitron.distill import intermediate as im

        if self.teacher is None:
            raise InputError("needs the teacher model: cached teacher logits carry no hidden states", flag=im.FLAG)
        student = unwrap(self.student)
        n_t, n_s = len(im.decoder_layers(self.teacher)), len(im.decoder_layers(student))
        if layer_map is None:
            if n_t != n_s:
                raise InputError(f"the student has {n_s} layers and the teacher {n_t}: give the layer map", flag=im.FLAG)
            layer_map = list(range(n_t))
        if len(layer_map) != n_s or not all(0 <= i < n_t for i in layer_map):
            raise InputError(f"layer map {layer_map} does not fit a {n_s}-layer student of a {n_t}-layer teacher",
                             flag=im.FLAG)  # fmt: skip
        p, residual = im.hidden_map(self.teacher, student)
        loss = im.IntermediateLoss(layer_map, p, residual)
        self._calibrate(loss)
        return loss

    def _calibrate(self, loss) -> None:
        from minitron.distill.intermediate import capture

        idx = self.order.indices(0, self.cfg.global_batch_size)[:1]  # the same on every rank and for any micro-batch
        ids = self.train_blocks[idx].to(self.device)
        with torch.no_grad(), capture(self.teacher, detach=True, layers=loss.layer_map) as states:
            self.source.output("calibrate", idx, ids, self.device, self.cfg.autocast_dtype)
        loss.calibrate(states)

    # -- state
    @property
    def tokens(self) -> int:
        return self.step * self.cfg.global_batch_size * self.seq_len

    def state_dict(self) -> dict:
        """Everything a resumed run needs. Collective under FSDP (every rank must call it)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd, optim_sd = get_state_dict(self.student, self.optimizer, options=opts)
        else:
            model_sd, optim_sd = unwrap(self.student).state_dict(), self.optimizer.state_dict()
        return {
            "student": model_sd, "optimizer": optim_sd, "schedule": self.schedule.state_dict(),
            "step": self.step, "samples_seen": self.step * self.cfg.global_batch_size, "tokens": self.tokens,
            "rng": rng_state(), "initial_eval": self.initial_eval, "config": self.cfg.to_dict(),
            **({"intermediate": self.intermediate.state_dict()} if self.intermediate is not None else {}),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Under FSDP only rank 0 needs the full weights and optimiser state (the other ranks may pass
        `{}` for both): they are broadcast tensor by tensor and each rank keeps its shards."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            # Two calls, not `set_state_dict`: that one skips the model on a rank whose model dict is empty.
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=True)
            set_optimizer_state_dict(self.student, self.optimizer, state["optimizer"], options=opts)
            set_model_state_dict(self.student, state["student"], options=opts)
        else:
            unwrap(self.student).load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.initial_eval = state.get("initial_eval")
        if self.intermediate is not None and "intermediate" in state:  # the map of the run's start, not of now
            from minitron.distill.intermediate import IntermediateLoss

            self.intermediate = IntermediateLoss.from_state(state["intermediate"])
        set_rng_state(state["rng"])

    # -- evaluation
    def evaluate(self) -> dict | None:
        if self.eval_blocks is None or self.eval_blocks.shape[0] == 0:
            return None
        model = self.student if self.fsdp else unwrap(self.student)
        bs = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        return evaluate(self.source, model, self.eval_blocks, micro_batch_size=bs, device=self.device,
                        autocast_dtype=self.cfg.autocast_dtype, chunk_size=self.cfg.chunk_size,
                        masks=self.eval_masks)  # fmt: skip

    # -- one optimiser step
    def norms(self, step: int) -> tuple[int, int]:
        """(KL positions, LM targets) of the whole global batch of `step`: what each sum is divided by."""
        g, L = self.cfg.global_batch_size, self.seq_len
        if self.train_masks is None:
            return g * L, g * (L - 1)
        m = self.train_masks[self.order.indices(step, g)]
        return int(m[:, 1:].sum()), int(m[:, 1:].sum())

    def accumulate_gradients(self, step: int) -> torch.Tensor:
        """Forward and backward of this rank's micro-batches of optimiser step `step`; gradients are
        left in `.grad` (all-reduced over ranks). Returns this rank's [kd sum, ce sum, L_is sum] (fp64)."""
        cfg, g = self.cfg, self.cfg.global_batch_size
        indices = self.order.indices(step, g)
        micro = rank_micro_batches(indices, cfg.micro_batch_size, self.rank, self.world)
        kd_norm, ce_norm = self.norms(step)  # tokens of the whole global batch
        kd_norm, ce_norm = max(kd_norm, 1), max(ce_norm, 1)
        sums = torch.zeros(3, dtype=torch.float64)
        states = self._states
        for i, idx in enumerate(micro):
            ids = self.train_blocks[idx].to(self.device)  # [micro, L]
            lm = None if self.train_masks is None else self.train_masks[idx].to(self.device)
            with states(self.teacher, detach=True) as t_states:
                target = self.source.output("train", idx, ids, self.device, cfg.autocast_dtype)  # logits or cached bins
            with self._sync(last=i == len(micro) - 1):
                with autocast(self.device, cfg.autocast_dtype), states(self.student, detach=False) as s_states:
                    s_logits = logits_of(self.student, ids)  # [micro, L, V]
                # Resident teacher: the gradient w.r.t. the student logits is written over its logits (no new [N, V]).
                kd = kd_loss(s_logits, target, kl_mask(lm), kind=cfg.loss, temperature=cfg.temperature,
                             top_k=cfg.top_k, chunk_size=cfg.chunk_size)  # fmt: skip
                del target  # now the gradient buffer, owned by the loss until the backward
                objective = kd / kd_norm
                if cfg.ce_weight > 0:
                    ce = lm_loss(s_logits, ids, lm, reduction="sum")
                    objective = objective + cfg.ce_weight * ce / ce_norm
                    sums[1] += float(ce.detach())
                if self.intermediate is not None:
                    inter = self.intermediate.sum(t_states, s_states, kl_mask(lm))
                    objective = objective + cfg.intermediate_weight * inter / kd_norm
                    sums[2] += float(inter.detach())
                    del t_states, s_states
                del s_logits
                (objective * self.world).backward()  # DDP / FSDP average over ranks: undo the 1/world
            sums[0] += float(kd.detach())
        return sums

    @contextlib.contextmanager
    def _states(self, model, detach: bool):
        """The layers' output states of `model` during the block ({} without the intermediate loss)."""
        if self.intermediate is None or model is None:
            yield {}
            return
        from minitron.distill.intermediate import capture

        layers = self.intermediate.layer_map if model is self.teacher else None  # the teacher's kept layers only
        with capture(model, detach, layers) as states:
            yield states

    def train_step(self) -> dict:
        cfg, g, L = self.cfg, self.cfg.global_batch_size, self.seq_len
        t0 = time.perf_counter()
        lr = self.schedule.apply(self.optimizer)
        kd_norm, ce_norm = self.norms(self.step)
        sums = self.accumulate_gradients(self.step)
        grad_norm = self._clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.advance()
        self.step += 1
        sums = reduce_sum(sums, self.device)
        dt = time.perf_counter() - t0
        self.train_time += dt
        self.trained_tokens += g * L
        kd_mean = float(sums[0] / max(kd_norm, 1))
        m = {"step": self.step, "tokens": self.tokens, "loss": kd_mean, "kd": kd_mean, "lr": lr,
             "grad_norm": grad_norm, "step_time_s": dt, "tokens_per_second": g * L / dt}  # fmt: skip
        if cfg.ce_weight > 0:
            m["lm_loss"] = float(sums[1] / max(ce_norm, 1))
            m["loss"] = kd_mean + cfg.ce_weight * m["lm_loss"]
        if self.intermediate is not None:
            m["intermediate"] = float(sums[2] / max(kd_norm, 1))
            m["loss"] = m["loss"] + cfg.intermediate_weight * m["intermediate"]
        if cfg.loss == "forward-kl" and cfg.top_k is None and cfg.temperature == 1.0 and not self.source.cached:
            m["kl"] = kd_mean
        if isinstance(self.order, Mix):  # the realised mix of the blocks read so far
            m["mix"] = dict(zip(self.order.names, self.order.realised(self.step, g), strict=True))
        self.last_metrics = m
        return m

    def _sync(self, last: bool):
        """Gradient all-reduce only on the last micro-batch of a step (DDP no_sync / FSDP2 flag)."""
        if self.fsdp:
            self.student.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if isinstance(self.student, torch.nn.parallel.DistributedDataParallel) and not last:
            return self.student.no_sync()
        return contextlib.nullcontext()

    def _clip(self) -> float:
        params = [p for p in self.student.parameters() if p.grad is not None]
        max_norm = self.cfg.clip if self.cfg.clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm)

    # -- the loop
    def train(self, *, on_step: Callable[[dict], None] | None = None, on_eval: Callable[[int, dict], None] | None = None,
              should_save: Callable[[int], bool] | None = None, save: Callable[[], None] | None = None) -> dict:  # fmt: skip
        """Run from `self.step` to `cfg.steps`; evaluate at the start (if not already done), every
        `eval_every` steps and at the end; call `save()` after steps where `should_save(step)`."""
        cfg = self.cfg
        if self.initial_eval is None and self.step == 0:
            self.initial_eval = self.evaluate()
            if on_eval and self.initial_eval is not None:
                on_eval(0, self.initial_eval)
        while self.step < cfg.steps:
            m = self.train_step()
            if on_step:
                on_step(m)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                ev = self.evaluate()
                if on_eval and ev is not None:
                    on_eval(self.step, ev)
            if save and should_save and self.step < cfg.steps and should_save(self.step):
                save()
        self.final_eval = self.evaluate()
        if on_eval and self.final_eval is not None:
            on_eval(self.step, self.final_eval)
        return self.summary()

    def summary(self) -> dict:
        return {
            "steps": self.step, "tokens": self.tokens, "initial_eval": self.initial_eval,
            "final_eval": self.final_eval, "train": self.last_metrics,
            "tokens_per_second": self.trained_tokens / self.train_time if self.train_time else None,
            **({"intermediate": {"weight": self.cfg.intermediate_weight, **self.intermediate.record()}}
               if self.intermediate is not None else {}),
        }  # fmt: skip


def quick_distill(teacher, student, train_blocks, eval_blocks, steps, lr=1e-4, micro_batch_size=4, *,
                  device: str = "cpu", initial_eval: bool = False, layer_map: list[int] | None = None,
                  **config) -> dict:  # fmt: skip
    """Distil `student` (trained in place) from `teacher` for `steps` steps; no files written.

    For ranking pruning candidates. The teacher is frozen during the run and handed back with its
    `requires_grad` flags and mode unchanged; student tensors that share memory with the teacher's
    are copied first, so the teacher's weights are never written. Returns `{"kl", "loss"}` of the final evaluation on
    `eval_blocks` (KL(teacher || student) per token, student LM loss), plus `steps`, `tokens`,
    `tokens_per_second` and, with `initial_eval=True`, `initial_eval`. Further `TrainConfig`
    fields (schedule, warmup_steps, global_batch_size, loss, ...) may be passed as keywords.
    """
    cfg = TrainConfig(steps=steps, lr=lr, micro_batch_size=micro_batch_size, **config)
    flags, mode = [p.requires_grad for p in teacher.parameters()], teacher.training
    try:
        trainer = Trainer(teacher, student, train_blocks, eval_blocks, cfg, device=device, layer_map=layer_map)
        if not initial_eval:
            trainer.initial_eval = {}  # skip the evaluation at the start
        summary = trainer.train()
    finally:  # the caller's teacher is left as it was given
        for p, f in zip(teacher.parameters(), flags, strict=True):
            p.requires_grad_(f)
        teacher.train(mode)
    student.eval()
    final = summary["final_eval"] or {}
    out = {"kl": final.get("kl"), "loss": final.get("loss"), "steps": summary["steps"], "tokens": summary["tokens"],
           "tokens_per_second": summary["tokens_per_second"]}  # fmt: skip
    if initial_eval:
        out["initial_eval"] = summary["initial_eval"]
    return out
