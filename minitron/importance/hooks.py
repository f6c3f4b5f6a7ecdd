"""Forward hooks that collect the width statistics of a model; the maths is in `width.py`.

Hooks are attached to transformers' own modules (`model.model.layers[i]`), at the points the
model's family names (`Family.hook_points`; for Nemotron-H `norm`, `mixer.down_proj`, ...):

    a pre-norm (each)     output         -> hidden channels of layer i
    MLP down_proj         input          -> FFN neurons
    attention o_proj      input          -> attention heads (KV heads derived at the end)
    mamba in_proj         output         -> x-slice: Mamba heads and head-dim channels
    MoE experts           inputs (x, top-k indices, top-k weights) -> routed experts and their neurons
                                             (`experts.py`; the experts' weights are read from the module;
                                             captured inside the experts' own forward, `expert_capture.py`,
                                             where transformers dispatches it, else recomputed in a hook)
    shared expert down_proj  input       -> shared-expert neurons

The x-slice is read from in_proj's output, which every Mamba path of transformers computes with the
module itself (the torch path, the mamba_ssm kernels and the fused training kernel alike), so the
statistics do not depend on which path runs. The final norm_f output is added by the engine
(`add_final`), since the head is evaluated in token chunks.

Collection only happens while `enabled` is true: the engine switches it off while it runs the
skip-one-block branches of the layer metrics.
"""

from __future__ import annotations

from minitron.families import submodule
from minitron.importance import experts as moe_maths
from minitron.importance import width
from minitron.importance.aggregate import Aggregation, batch_partial, finalize_batch, reduce_seq
from minitron.importance.expert_capture import ExpertCapture
from minitron.models.architecture import Architecture

_MOE_SUMS = ("routed", "gate_norm", "norm", "act")


class WidthCollector:
    def __init__(self, arch: Architecture, agg: Aggregation, stats, expert_metric: str = "reap"):
        self.arch, self.agg, self.stats = arch, agg, stats
        self.expert_metric = expert_metric
        self.enabled = False
        self.out_norms: dict[int, object] = {}  # Mamba layer position -> [H] output weight norms
        self._handles: list = []
        self._capture: ExpertCapture | None = None

    # ------------------------------------------------------------------ collection
    def add(self, name: str, values) -> None:
        """[B, T, U] per-token unit values of one batch -> the running statistic `name`."""
        self.stats.add(name, batch_partial(reduce_seq(values, self.agg.seq), self.agg.batch))

    def add_final(self, normed) -> None:
        """The output of norm_f, [B, T, hidden] (counted as one more layer of the hidden signal)."""
        if self.enabled:
            self.add("hidden.final", width.channel_values(normed))

    def attach(self, model) -> WidthCollector:
        a = self.arch
        layers = model.model.layers
        positions = {c: {i: k for k, i in enumerate(a.layers_with(c))} for c in ("ffn", "attention", "mamba", "moe")}
        nq = a.num_attention_heads
        for i, c in enumerate(a.pattern):
            blk = layers[i]
            for point in a.impl.hook_points(a, c):
                mod = submodule(blk, point.path)
                if point.kind == "hidden":
                    name = _hidden_name(i, point.tag)
                    self._handles.append(mod.register_forward_hook(self._out_hook(name, width.channel_values)))
                elif point.kind == "ffn":
                    hook = self._in_hook(f"ffn.{positions['ffn'][i]}", width.channel_values)
                    self._handles.append(mod.register_forward_pre_hook(hook))
                elif point.kind == "attention":
                    hook = self._in_hook(f"attention.{positions['attention'][i]}",
                                         lambda t, nq=nq: width.head_values(t, nq))
                    self._handles.append(mod.register_forward_pre_hook(hook))
                elif point.kind == "experts":
                    if self._capture is None:
                        self._capture = ExpertCapture(model, lambda: self.enabled)
                    if not self._capture.observe(mod, self._add_expert_sums(positions["moe"][i])):
                        hook = self._experts_hook(positions["moe"][i])  # recomputes the routed experts
                        self._handles.append(mod.register_forward_hook(hook, with_kwargs=True))
                elif point.kind == "shared_ffn":
                    hook = self._in_hook(f"shared_ffn.{positions['moe'][i]}", width.channel_values)
                    self._handles.append(mod.register_forward_pre_hook(hook))
                elif point.kind == "mamba":
                    mixer = submodule(blk, point.path.rpartition(".")[0])  # the module holding in_proj
                    self._handles.append(mod.register_forward_hook(self._mamba_hook(positions["mamba"][i], mixer)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    def _out_hook(self, name, fn):
        def hook(_module, _inputs, output):
            if self.enabled:
                self.add(name, fn(output))

        return hook

    def _in_hook(self, name, fn):
        def hook(_module, inputs):
            if self.enabled:
                self.add(name, fn(inputs[0]))

        return hook

    def _add_expert_sums(self, k: int):
        def add(sums):
            for name, t in sums.items():
                self.stats.add(f"moe_{name}.{k}", t)

        return add

    def _experts_hook(self, k: int):
        """transformers' experts module is called as `experts(x, top_k_index, top_k_weights)`; it holds
        `up_proj` (Nemotron-H: `act(up x)`) or a fused `gate_up_proj` (Granite: `act(gate x) · up x`).
        The fallback where the module does not dispatch through transformers' experts interface."""
        add = self._add_expert_sums(k)

        def hook(module, args, kwargs, _output):
            if not self.enabled:
                return
            names = ("hidden_states", "top_k_index", "top_k_weights")  # positional or by keyword
            x, idx, w = (args[j] if j < len(args) else kwargs[n] for j, n in enumerate(names))
            gated = not hasattr(module, "up_proj")
            up = module.gate_up_proj if gated else module.up_proj
            add(moe_maths.expert_sums(x, idx, w, up, module.down_proj, module.act_fn, gated=gated))

        return hook

    def _mamba_hook(self, k: int, mixer):
        a = self.arch

        def hook(_module, _inputs, projected):
            if not self.enabled:
                return
            x = width.mamba_x_slice(projected, a.mamba_intermediate)  # [B, T, H·P]
            self.add(f"mamba_heads.{k}", width.head_values(x, a.mamba_num_heads))
            self.add(f"mamba_channels.{k}", width.channel_values(x))
            if k not in self.out_norms:  # the weights are materialised now (also when streaming)
                self.out_norms[k] = width.mamba_output_weight_norms(
                    mixer.out_proj.weight.detach(), mixer.norm.weight.detach(), a.mamba_num_heads
                ).double().cpu()

        return hook

    def _hidden_names(self, skip=frozenset()) -> list[str]:
        """One statistic per norm that reads the residual stream (one per Nemotron-H block, two per Llama block)."""
        a = self.arch
        return [_hidden_name(i, p.tag) for i, c in enumerate(a.pattern) if i not in skip
                for p in a.impl.hook_points(a, c) if p.kind == "hidden"]

    # ------------------------------------------------------------------ results
    def stat_shapes(self, skip=frozenset()) -> dict[str, tuple[int, ...]]:
        """Every statistic this collector produces (for the cross-rank reduction)."""
        a = self.arch
        shapes = {name: (a.hidden_size,) for name in self._hidden_names(skip)}
        shapes["hidden.final"] = (a.hidden_size,)
        for k, i in enumerate(a.ffn_layers()):
            if i not in skip:
                shapes[f"ffn.{k}"] = (a.intermediate_size,)
        for k, i in enumerate(a.attention_layers()):
            if i not in skip:
                shapes[f"attention.{k}"] = (a.num_attention_heads,)
        for k, i in enumerate(a.mamba_layers()):
            if i not in skip:
                shapes[f"mamba_heads.{k}"] = (a.mamba_num_heads,)
                shapes[f"mamba_channels.{k}"] = (a.mamba_intermediate,)
        for k, i in enumerate(a.moe_layers()):
            if i not in skip:
                e = a.n_routed_experts
                shapes.update({f"moe_routed.{k}": (e,), f"moe_gate_norm.{k}": (e,), f"moe_norm.{k}": (e,),
                               f"moe_act.{k}": (e, a.moe_intermediate_size),
                               f"shared_ffn.{k}": (a.moe_shared_expert_intermediate_size,)})
        return shapes

    def finalize(self, n_samples: float, n_tokens: float = 0.0) -> dict:
        """The width tensors of `scores.safetensors` (float32); layers never run score 0."""
        import torch

        a, how = self.arch, self.agg.batch

        def get(name, size):
            if name not in self.stats:
                return torch.zeros(size, dtype=torch.float64)
            return finalize_batch(self.stats[name], n_samples, how)

        hidden = sum(get(n, a.hidden_size) for n in self._hidden_names()) + get("hidden.final", a.hidden_size)
        ffn = [get(f"ffn.{k}", a.intermediate_size) for k in range(len(a.ffn_layers()))]
        att = [get(f"attention.{k}", a.num_attention_heads) for k in range(len(a.attention_layers()))]
        mh, md = [], []
        for k in range(len(a.mamba_layers())):
            norms = self.out_norms.get(k, torch.zeros(a.mamba_num_heads, dtype=torch.float64))
            mh.append(width.mamba_head_scores(get(f"mamba_heads.{k}", a.mamba_num_heads), norms))
            md.append(width.mamba_head_dim_scores(get(f"mamba_channels.{k}", a.mamba_intermediate), a.mamba_num_heads))

        def stack(rows, width_):
            return torch.stack(rows) if rows else torch.zeros((0, 0), dtype=torch.float64)

        att_t = stack(att, a.num_attention_heads)
        out = {
            "hidden": hidden,
            "ffn": stack(ffn, a.intermediate_size),
            "attention_heads": att_t,
            "kv_heads": width.kv_scores(att_t, a.num_key_value_heads) if att else torch.zeros((0, 0), dtype=torch.float64),
            "mamba_heads": stack(mh, a.mamba_num_heads),
            "mamba_head_dim": stack(md, a.mamba_head_dim),
            **self._finalize_moe(get, n_tokens),
        }
        return {k: v.float() for k, v in out.items()}

    def _finalize_moe(self, get, n_tokens: float) -> dict:
        """`experts` (the chosen metric), `experts_<other>` (the others), `moe_ffn`, `shared_expert_ffn`."""
        import torch

        a = self.arch
        n = len(a.moe_layers())
        if not n:
            return {}
        e, f = a.n_routed_experts, a.moe_intermediate_size
        sums = []
        for k in range(n):
            d = {name: self.stats[f"moe_{name}.{k}"] if f"moe_{name}.{k}" in self.stats else
                 torch.zeros((e, f) if name == "act" else (e,), dtype=torch.float64) for name in _MOE_SUMS}
            sums.append(d)
        out = {}
        for metric in moe_maths.EXPERT_METRICS:
            key = "experts" if metric == self.expert_metric else f"experts_{metric}"
            out[key] = torch.stack([moe_maths.expert_scores(d, n_tokens, metric) for d in sums])
        out["moe_ffn"] = torch.stack([moe_maths.expert_neuron_scores(d) for d in sums])
        out["shared_expert_ffn"] = torch.stack([get(f"shared_ffn.{k}", a.moe_shared_expert_intermediate_size)
                                                for k in range(n)])
        return out


def _hidden_name(i: int, tag: str) -> str:
    return f"hidden.{i}" + (f".{tag}" if tag else "")
