"""`Family`: what minitron needs to know about one model family, and nothing else.

A family turns a config into an `Architecture` (and a pruned one back into a config), says which
components each layer type holds, declares the tensors of each layer with their segments (the
coupled groups of `minitron.models.tensors`), counts parameters exactly, and says where the
importance hooks attach and how to call one block on its own. Everything else - scoring, the plan,
in-memory and streaming apply, search, the memory model, distillation, evaluation - is shared and
only asks the family through this interface.

Components a layer can hold (`components(char)`): `attention`, `ffn` (a plain or gated MLP whose
neurons are the `ffn` axis), `mamba` (a Mamba-2 mixer), `moe` (routed experts). A Nemotron-H layer
holds one; a Llama decoder layer holds `attention` and `ffn`; a Granite 4.0-H layer `mamba` or
`attention` plus `ffn`.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.errors import InputError

ATTENTION_C, FFN_C, MAMBA_C, MOE_C = "attention", "ffn", "mamba", "moe"


@dataclass(frozen=True)
class HookPoint:
    """One module of a block whose activations feed an importance statistic.

    `kind`: `hidden` (output of a norm that reads the residual stream: its channels), `ffn` (input
    of the MLP's down projection: its neurons), `attention` (input of o_proj: per query head),
    `mamba` (output of in_proj: the x-slice), `experts` (a routed-experts module, called with the router's
    top-k: routed experts and their neurons), `shared_ffn` (input of a shared expert's down projection).
    `path`: dotted attribute path inside the block.
    """

    kind: str
    path: str
    tag: str = ""  # tells two `hidden` points of one block apart (`""`, `post`)


@dataclass(frozen=True)
class ModuleNames:
    """Attribute names of the base model's pieces (`model.<embedding>`, `model.<final_norm>`)."""

    embedding: str
    final_norm: str


class Family:
    """The interface; `minitron.families.nemotron_h` and `minitron.families.dense` implement it."""

    name: str = ""
    modules: ModuleNames

    # ------------------------------------------------------------------ config <-> architecture
    def read(self, cfg: dict) -> dict:
        """The `Architecture` fields of a config (`Architecture.from_config` builds and validates it)."""
        raise NotImplementedError

    def write(self, arch) -> dict:
        """The config dict of `arch`: the original config with sizes (and layers) rewritten."""
        raise NotImplementedError

    def validate(self, arch, need) -> None:
        """Family-specific structural checks; `need(ok, msg)` raises the config error."""

    # ------------------------------------------------------------------ structure
    def components(self, char: str) -> frozenset[str]:
        raise NotImplementedError

    def layer_components(self, arch, char: str) -> frozenset[str]:
        """`components(char)` of a layer of `arch` (Granite: `moe` too where the config has routed experts)."""
        return self.components(char)

    def layer_specs(self, arch, i: int, char: str, layout: str) -> list:
        raise NotImplementedError

    def model_specs(self, arch, layout: str) -> list:
        raise NotImplementedError

    def params(self, arch) -> dict[str, int]:
        raise NotImplementedError

    def layer_params(self, arch, char: str) -> int:
        raise NotImplementedError

    def active_params(self, arch) -> dict[str, int]:
        """Parameters one token uses (per component and `total`); a family without routed experts: all."""
        return self.params(arch)

    def moe_unit_counts(self, arch) -> dict[str, int]:
        """`unit_counts()` of the MoE axes (`experts`, `moe_ffn`, `shared_expert_ffn`, `experts_per_token`)."""
        return {"experts": 0, "moe_ffn": 0, "shared_expert_ffn": 0, "experts_per_token": 0}

    def unsupported_axes(self, arch) -> dict[str, str]:
        """Shape keys (`hidden_size`, `ffn_size`, ...) this family cannot cut soundly -> the reason."""
        return {}

    def fixed_layer_types(self, arch) -> dict[str, str]:
        """Pattern characters of layers that can never be dropped -> the reason (Zamba2's hybrid layers)."""
        return {}

    def target_problem(self, arch, target) -> tuple[str, str] | None:
        """(flag, reason) when the pruned architecture `target` of `arch` cannot be written soundly."""
        return None

    def hidden_norm_readers(self, arch) -> dict[str, tuple[str, ...]] | None:
        """Each RMSNorm weight on the residual stream (canonical name) -> the name prefixes of the tensors
        that read its output; None where the family has not declared them (then `--hidden-basis pca`,
        `minitron.prune.rotation`, is refused). Uses `norm_readers_by_layer`."""
        per_layer = self.norm_readers_by_layer(arch)
        if per_layer is None:
            return None
        out = {}
        for i in range(arch.num_layers):
            for norm, readers in per_layer(i).items():
                out[f"layers.{i}.{norm}.weight"] = tuple(f"layers.{i}.{r}." for r in readers)
        out[self.modules.final_norm + ".weight"] = ("lm_head.",)
        return out

    def norm_readers_by_layer(self, arch):
        """A function of the layer number -> {norm module: (reader modules, ...)}, or None."""
        return None

    # ------------------------------------------------------------------ running blocks
    def hook_points(self, arch, char: str) -> list[HookPoint]:
        raise NotImplementedError

    def prepare_blocks(self, model, config, h) -> dict:
        """What `call_block` needs to run any block on [B, T, hidden] states `h` (no padding)."""
        raise NotImplementedError

    def call_block(self, blk, i: int, h, kw: dict):
        raise NotImplementedError

    def kv_tokens(self, arch, i: int, context: int) -> int:
        """Tokens the KV cache of attention layer `i` holds at `context` (fewer for a sliding window)."""
        return context

    def embedding_scale(self, config) -> float:
        """Factor the base model applies to the embeddings before the first block (Granite's µP)."""
        return 1.0

    def logits_divisor(self, config) -> float:
        """What the causal-LM head divides its logits by (Granite's `logits_scaling`)."""
        return 1.0

    def checkpoint_tensor(self, arch, canonical: str) -> str:
        """The name a module tensor (canonical, module layout) is stored under, where transformers renames
        it on load (Granite's MoE tensors) or stores a tied tensor once (Zamba2's shared block); the
        streaming source reads blocks through it."""
        return canonical

    def fix_meta_model(self, model, config, device) -> None:
        """Rebuild non-persistent buffers of a model built on the meta device (rotary tables)."""


def config_getter(cfg: dict):
    """`get(key, default=None, *aliases)`: a config value; a missing key without a default is an error."""

    def get(key, default=None, *aliases):
        for k in (key, *aliases):
            if k in cfg and cfg[k] is not None:
                return cfg[k]
        if default is None:
            raise InputError(f"config.json: missing `{key}`")
        return default

    return get


def submodule(root, path: str):
    """`root.a.b` for path `a.b` (`root` itself for an empty path)."""
    for part in filter(None, path.split(".")):
        root = getattr(root, part)
    return root
