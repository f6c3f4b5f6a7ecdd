"""Layer-by-layer execution of a checkpoint straight from its safetensors files.

`StreamingSource` builds transformers' own model class on the meta device (no memory), then
materialises one piece at a time - the embedding, one block, the final norm and lm_head - from the
shards, runs it, and returns it to the meta device. Peak memory is one block's weights plus the
activations, whatever the size of the model, so a 12B model can be scored on a 22 GiB GPU or on a CPU
machine with little RAM. It plugs into `minitron.importance.engine` as a *layer-major* source.

Checkpoints store MoE experts one tensor per expert (`experts.{j}.up_proj.weight`); the module holds
them fused (`experts.up_proj`, [E, ...]): `read_module_tensor` stacks them.
"""

from __future__ import annotations

import contextlib
import gc
from collections import defaultdict
from pathlib import Path

from minitron.errors import CheckpointError
from minitron.models.checkpoint import Checkpoint, open_checkpoint
from minitron.models.tensors import canonical_name

_EXPERTS = ".mixer.experts."


class StreamingSource:
    layer_major = True

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype=None, ckpt: Checkpoint | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.ckpt = ckpt or open_checkpoint(path, require_weights=True)
        self.dtype = dtype or torch.float32
        self.device = torch.device(device)
        self.config = AutoConfig.from_pretrained(self.ckpt.path)
        self.family = self.ckpt.arch.impl
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        self.model.eval()
        self.family.fix_meta_model(self.model, self.config, self.device)  # e.g. rotary tables on the device
        self.num_layers = len(self.model.model.layers)
        names = self.family.modules
        self._emb, self._norm = names.embedding, names.final_norm
        # Tensors transformers keeps in fp32 whatever the dtype (as `from_pretrained` does).
        self.keep_fp32 = tuple(getattr(self.model, "_keep_in_fp32_modules_strict", None) or ()) + tuple(
            getattr(self.model, "_keep_in_fp32_modules", None) or ()
        )
        self.bytes_read = 0

    # ------------------------------------------------------------------ pieces
    @contextlib.contextmanager
    def embedding(self):
        with self._materialised(getattr(self.model.model, self._emb), f"model.{self._emb}.") as m:
            yield m

    @contextlib.contextmanager
    def block(self, j: int):
        with self._materialised(self.model.model.layers[j], f"model.layers.{j}.") as m:
            yield m

    @contextlib.contextmanager
    def head(self):
        norm = getattr(self.model.model, self._norm)
        tied = "lm_head.weight" not in self.ckpt.specs()  # the family ties it to the embedding
        with self._materialised(norm, f"model.{self._norm}."), \
                self._materialised(self.model.lm_head, "lm_head.", tied=tied):
            yield norm, self.model.lm_head

    # ------------------------------------------------------------------ loading
    @contextlib.contextmanager
    def _materialised(self, module, prefix: str, tied: bool = False):
        """Load `module`'s tensors (state-dict names under `prefix`) onto the device; free them after."""
        state = module.state_dict()
        names = {k: prefix + k for k in state}
        if tied:  # lm_head shares the embedding matrix
            names = {k: f"model.{self._emb}." + k for k in state}
        tensors = self.read_module_tensors(names, {k: tuple(v.shape) for k, v in state.items()})
        module.load_state_dict(tensors, strict=True, assign=True)
        module.to(self.device)
        del tensors
        try:
            yield module
        finally:
            module.to("meta")
            gc.collect()

    def read_module_tensors(self, names: dict[str, str], shapes: dict[str, tuple]) -> dict:
        """{local name: module-layout full name} -> {local name: tensor in the compute dtype, on CPU}."""
        import torch

        wanted: dict[str, list[tuple[str, str, int | None]]] = defaultdict(list)  # file -> (local, key, expert)
        for local, full in names.items():
            canon = canonical_name(full)
            if _EXPERTS in canon and canon.rsplit(".", 1)[-1] in ("up_proj", "down_proj"):
                base, proj = canon.rsplit(".", 1)
                n_exp = shapes[local][0]
                for e in range(n_exp):
                    entry = self._entry(f"{base}.{e}.{proj}.weight")
                    wanted[entry.file].append((local, entry.key, e))
            else:
                entry = self._entry(self.family.checkpoint_tensor(self.ckpt.arch, canon))
                wanted[entry.file].append((local, entry.key, None))
        out: dict = {}
        parts: dict[str, dict[int, object]] = defaultdict(dict)
        from safetensors import safe_open

        for file, items in wanted.items():
            with safe_open(str(self.ckpt.path / file), framework="pt", device="cpu") as f:
                for local, key, expert in items:
                    fp32 = any(k in names[local] for k in self.keep_fp32)
                    t = f.get_tensor(key).to(torch.float32 if fp32 else self.dtype)
                    self.bytes_read += t.numel() * t.element_size()
                    if expert is None:
                        out[local] = t
                    else:
                        parts[local][expert] = t
        for local, by_expert in parts.items():
            out[local] = torch.stack([by_expert[e] for e in range(len(by_expert))])
        for local, t in out.items():
            if tuple(t.shape) != tuple(shapes[local]):
                raise CheckpointError(f"{names[local]}: checkpoint shape {list(t.shape)} != model {list(shapes[local])}")
        return out

    def _entry(self, canonical: str):
        try:
            return self.ckpt.entry(canonical)
        except KeyError:
            raise CheckpointError(f"{self.ckpt.path}: missing tensor {canonical}") from None
