"""Forward hooks that collect the width statistics of a model; the maths is in `width.py`.

Hooks are attached to transformers' own modules (`model.model.layers[i]`), at the points the
model's family names (`Family.hook_points`; for Nemotron-H `norm`, `mixer.down_proj`, ...):

    a pre-norm (each)     output         -> hidden channels of layer i
                          input          -> the covariance of the normalised residual stream, summed
                                             over the norms (`hidden_covariance`: the basis of
                                             `prune --hidden-basis pca`, `minitron.prune.rotation`)
    MLP down_proj         input          -> FFN neurons
    attention o_proj      input          -> attention heads (KV heads derived at the end)
    mamba in_proj         output         -> x-slice: Mamba heads and head-dim channels
    mamba out_proj        input          -> gated output y (only for the `gated*` signals, `signals.py`)
    down_proj, o_proj, out_proj, the shared expert's down_proj: input -> with `grams`, its mean x x^T
                                             (`gram.<component>.<k>`: what `prune --compensation`
                                             refits the kept columns with, `minitron.prune.compensation`)
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
from minitron.importance import signals, width
from minitron.importance.aggregate import Aggregation, batch_partial, finalize_batch, reduce_seq
from minitron.importance.expert_capture import ExpertCapture
from minitron.models.architecture import Architecture

_MOE_SUMS = ("routed", "gate_norm", "norm", "act")


class WidthCollector:
    """`width_metrics`: axis -> signal name (`signals.py`; missing axes take the default). With
    `all_metrics`, every candidate signal is collected too and `finalize` adds `candidate.AXIS.NAME`
    tensors beside the chosen ones (for the ablation benchmark; `minitron score` never writes them)."""

    def __init__(self, arch: Architecture, agg: Aggregation, stats, expert_metric: str = "reap",
                 width_metrics: dict | None = None, all_metrics: bool = False, grams: bool = False):
        from minitron.importance.aggregate import Stats

        self.arch, self.agg, self.stats = arch, agg, stats
        self.expert_metric = expert_metric
        self.metrics = signals.resolve(width_metrics)
        self.all_metrics = all_metrics
        self.enabled = False
        self.out_norms: dict[int, object] = {}  # Mamba layer position -> [H] output weight norms
        self.down_norms: dict[int, object] = {}  # MLP layer position -> [F] down_proj column norms
        self._handles: list = []
        self._capture: ExpertCapture | None = None
        self._cov = None  # float64 running sum of u u^T on the model's device (u = x / rms(x)), and its rows
        self._cov_rows = 0
        # with `grams`: the output projections' input Gram matrices, kept apart from `stats` (never split
        # in halves: each is [in, in]); name -> running float64 sum of x^T x on the model's device
        self.grams = grams
        self.gram_stats = Stats()
        self._grams: dict[str, list] = {}

    def wants(self, axis: str, name: str) -> bool:
        """Whether signal `name` of `axis` is collected."""
        return self.all_metrics or self.metrics[axis] == name

    # ------------------------------------------------------------------ collection
    def add(self, name: str, values) -> None:
        """[B, T, U] per-token unit values of one batch -> the running statistic `name`."""
        self.stats.add(name, batch_partial(reduce_seq(values, self.agg.seq), self.agg.batch))

    def add_final(self, normed, states=None) -> None:
        """The output of norm_f, [B, T, hidden] (counted as one more layer of the hidden signal), and
        its input `states` (one more norm of the covariance)."""
        if self.enabled:
            self.add("hidden.final", width.channel_values(normed))
            if states is not None:
                self.add_covariance(states)

    def add_covariance(self, x) -> None:
        """[B, T, hidden] input of a norm on the residual stream -> the running sum of u u^T."""
        import torch

        u = x.detach().reshape(-1, x.shape[-1]).float()
        u = u * torch.rsqrt(u.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-12))
        part = (u.T @ u).double()
        self._cov = part if self._cov is None else self._cov.add_(part)
        self._cov_rows += u.shape[0]

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
                    self._handles.append(mod.register_forward_pre_hook(self._covariance_hook))
                elif point.kind == "ffn":
                    k = positions["ffn"][i]
                    hook = self._in_hook(f"ffn.{k}", width.channel_values)
                    self._handles.append(mod.register_forward_pre_hook(hook))
                    self._gram(mod, f"ffn.{k}")
                    if self.wants("ffn", "act_down"):
                        self._handles.append(mod.register_forward_pre_hook(self._down_norm_hook(k)))
                elif point.kind == "attention":
                    k = positions["attention"][i]
                    hook = self._in_hook(f"attention.{k}", lambda t, nq=nq: width.head_values(t, nq))
                    self._handles.append(mod.register_forward_pre_hook(hook))
                    self._gram(mod, f"attention.{k}")
                    if self.wants("attention_heads", "act_out"):
                        self._handles.append(mod.register_forward_pre_hook(self._contribution_hook(
                            f"attention_out.{k}", nq)))
                elif point.kind == "experts":
                    if self._capture is None:
                        self._capture = ExpertCapture(model, lambda: self.enabled)
                    if not self._capture.observe(mod, self._add_expert_sums(positions["moe"][i])):
                        hook = self._experts_hook(positions["moe"][i])  # recomputes the routed experts
                        self._handles.append(mod.register_forward_hook(hook, with_kwargs=True))
                elif point.kind == "shared_ffn":
                    hook = self._in_hook(f"shared_ffn.{positions['moe'][i]}", width.channel_values)
                    self._handles.append(mod.register_forward_pre_hook(hook))
                    self._gram(mod, f"shared_ffn.{positions['moe'][i]}")
                elif point.kind == "mamba":
                    mixer = submodule(blk, point.path.rpartition(".")[0])  # the module holding in_proj
                    k = positions["mamba"][i]
                    self._handles.append(mod.register_forward_hook(self._mamba_hook(k, mixer)))
                    if self._gated_wanted():
                        self._handles.append(mixer.out_proj.register_forward_pre_hook(self._gated_hook(k)))
                    self._gram(mixer.out_proj, f"mamba.{k}")
        return self

    def _gram(self, module, name: str) -> None:
        """With `grams`: accumulate `module`'s input Gram matrix as `gram.<name>`."""
        if not self.grams:
            return

        def hook(_module, inputs):
            if self.enabled:
                x = inputs[0].detach()
                x = x.reshape(-1, x.shape[-1]).double()
                part = x.T @ x
                acc = self._grams.setdefault(name, [None, 0])
                acc[0] = part if acc[0] is None else acc[0].add_(part)
                acc[1] += x.shape[0]

        self._handles.append(module.register_forward_pre_hook(hook))

    def detach(self) -> None:
        """Remove the hooks, and move the covariance into the statistics (whole, not split in halves)."""
        import torch

        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._cov is not None:
            odd, self.stats.odd = self.stats.odd, False
            self.stats.add("hidden_cov", self._cov)
            self.stats.add("hidden_cov_rows", torch.tensor([float(self._cov_rows)]))
            self.stats.odd = odd
            self._cov, self._cov_rows = None, 0
        for name, (total, rows) in self._grams.items():
            self.gram_stats.add(f"gram.{name}", total)
            self.gram_stats.add(f"gram_rows.{name}", torch.tensor([float(rows)], dtype=torch.float64))
        self._grams.clear()
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

    def _covariance_hook(self, _module, inputs) -> None:
        """A norm's input -> the covariance of the normalised residual stream."""
        if self.enabled:
            self.add_covariance(inputs[0])

    def _add_expert_sums(self, k: int):
        def add(sums):
            for name, t in sums.items():
                self.stats.add(f"moe_{name}.{k}", t)

        return add

    def _gated_wanted(self) -> bool:
        return any(self.wants(ax, n) for ax, n in (("mamba_heads", "gated"), ("mamba_heads", "gated_out"),
                                                    ("mamba_head_dim", "gated")))

    def _down_norm_hook(self, k: int):
        def hook(module, _inputs):
            if self.enabled and k not in self.down_norms:  # the weights are materialised now (also when streaming)
                self.down_norms[k] = signals.column_norms(module.weight.detach()).cpu()

        return hook

    def _contribution_hook(self, name: str, n_heads: int):
        def hook(module, inputs):
            if self.enabled:
                self.add(name, signals.head_contributions(inputs[0], module.weight.detach(), n_heads))

        return hook

    def _gated_hook(self, k: int):
        """out_proj's input y [B, T, H·P] (the gated RMSNorm output, head-major)."""
        h_n = self.arch.mamba_num_heads

        def hook(module, inputs):
            if not self.enabled:
                return
            y = inputs[0]
            if self.wants("mamba_heads", "gated"):
                self.add(f"mamba_gated.{k}", width.head_values(y, h_n))
            if self.wants("mamba_heads", "gated_out"):
                self.add(f"mamba_gated_out.{k}", signals.head_contributions(y, module.weight.detach(), h_n))
            if self.wants("mamba_head_dim", "gated"):
                self.add(f"mamba_gated_channels.{k}", width.channel_values(y))

        return hook

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
                norm = getattr(getattr(mixer, "norm", None), "weight", None)  # Falcon-H1 may have none (Identity)
                out_w = mixer.out_proj.weight.detach()
                self.out_norms[k] = width.mamba_output_weight_norms(
                    out_w, norm.detach() if norm is not None else out_w.new_ones(out_w.shape[1]), a.mamba_num_heads
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
        shapes["hidden_cov"], shapes["hidden_cov_rows"] = (a.hidden_size, a.hidden_size), (1,)
        for k, i in enumerate(a.ffn_layers()):
            if i not in skip:
                shapes[f"ffn.{k}"] = (a.intermediate_size,)
        for k, i in enumerate(a.attention_layers()):
            if i not in skip:
                shapes[f"attention.{k}"] = (a.num_attention_heads,)
                if self.wants("attention_heads", "act_out"):
                    shapes[f"attention_out.{k}"] = (a.num_attention_heads,)
        for k, i in enumerate(a.mamba_layers()):
            if i not in skip:
                shapes[f"mamba_heads.{k}"] = (a.mamba_num_heads,)
                shapes[f"mamba_channels.{k}"] = (a.mamba_intermediate,)
                for name, stat, size in (("gated", "mamba_gated", a.mamba_num_heads),
                                         ("gated_out", "mamba_gated_out", a.mamba_num_heads)):
                    if self.wants("mamba_heads", name):
                        shapes[f"{stat}.{k}"] = (size,)
                if self.wants("mamba_head_dim", "gated"):
                    shapes[f"mamba_gated_channels.{k}"] = (a.mamba_intermediate,)
        for k, i in enumerate(a.moe_layers()):
            if i not in skip:
                e = a.n_routed_experts
                shapes.update({f"moe_routed.{k}": (e,), f"moe_gate_norm.{k}": (e,), f"moe_norm.{k}": (e,),
                               f"moe_act.{k}": (e, a.moe_intermediate_size),
                               f"shared_ffn.{k}": (a.moe_shared_expert_intermediate_size,)})
        return shapes

    def gram_shapes(self, skip=frozenset()) -> dict[str, tuple[int, ...]]:
        """The Gram statistics collected with `grams` (for the cross-rank reduction of `gram_stats`)."""
        a = self.arch
        if not self.grams:
            return {}
        sizes = {"ffn": (a.ffn_layers(), a.intermediate_size),
                 "attention": (a.attention_layers(), a.num_attention_heads * a.head_dim),
                 "mamba": (a.mamba_layers(), a.mamba_intermediate),
                 "shared_ffn": (a.moe_layers(), a.moe_shared_expert_intermediate_size)}
        out = {}
        for comp, (layers, n) in sizes.items():
            for k, i in enumerate(layers):
                if i not in skip:
                    out[f"gram.{comp}.{k}"], out[f"gram_rows.{comp}.{k}"] = (n, n), (1,)
        return out

    def finalize_grams(self) -> dict:
        """`gram.<component>.<k>`: the mean x x^T over every token at that projection's input (float32)."""
        out = {}
        for name in sorted(self.gram_stats.sums):
            if name.startswith("gram.") and name in self.gram_stats:
                rows = float(self.gram_stats["gram_rows." + name[5:]].item())
                if rows > 0:
                    out[name] = (self.gram_stats[name] / rows).float()
        return out

    def finalize(self, n_samples: float, n_tokens: float = 0.0) -> dict:
        """The width tensors of `scores.safetensors` (float32); layers never run score 0."""
        import torch

        a, how = self.arch, self.agg.batch

        def get(name, size):
            if name not in self.stats:
                return torch.zeros(size, dtype=torch.float64)
            return finalize_batch(self.stats[name], n_samples, how)

        cands = self._candidates(get)
        chosen = {axis: cands[axis][name] for axis, name in self.metrics.items()}

        def kv(att_t):
            return width.kv_scores(att_t, a.num_key_value_heads) if att_t.numel() else torch.zeros((0, 0), dtype=torch.float64)

        out = {
            "hidden": chosen["hidden"],
            "ffn": chosen["ffn"],
            "attention_heads": chosen["attention_heads"],
            "kv_heads": kv(chosen["attention_heads"]),
            "mamba_heads": chosen["mamba_heads"],
            "mamba_head_dim": chosen["mamba_head_dim"],
            **self._finalize_moe(get, n_tokens),
        }
        if "hidden_cov" in self.stats and float(self.stats["hidden_cov_rows"].item()) > 0:
            out["hidden_covariance"] = self.stats["hidden_cov"] / float(self.stats["hidden_cov_rows"].item())
        if self.all_metrics:
            for axis, by_name in cands.items():
                for name, t in by_name.items():
                    out[f"candidate.{axis}.{name}"] = t
            for name, t in cands["attention_heads"].items():
                out[f"candidate.kv_heads.{name}"] = kv(t)
        return {k: v.float() for k, v in out.items()}

    def _candidates(self, get) -> dict:
        """axis -> {signal name: tensor} for every signal collected (`wants`); float64."""
        import torch

        a = self.arch

        def stack(rows):
            return torch.stack(rows) if rows else torch.zeros((0, 0), dtype=torch.float64)

        per_layer = [get(n, a.hidden_size) for n in self._hidden_names()] + [get("hidden.final", a.hidden_size)]
        out: dict = {axis: {} for axis in signals.WIDTH_METRICS}
        for how in signals.WIDTH_METRICS["hidden"][1]:
            if self.wants("hidden", how):
                out["hidden"][how] = signals.combine_layers(per_layer, how)  # [L+1, H] -> [H]
        n_ffn, n_att, n_m = len(a.ffn_layers()), len(a.attention_layers()), len(a.mamba_layers())
        f, nq, hm, inner = a.intermediate_size, a.num_attention_heads, a.mamba_num_heads, a.mamba_intermediate
        act = [get(f"ffn.{k}", f) for k in range(n_ffn)]
        out["ffn"]["act"] = stack(act)
        if self.wants("ffn", "act_down"):
            out["ffn"]["act_down"] = stack([act[k] * self.down_norms.get(k, torch.zeros(f, dtype=torch.float64))
                                            for k in range(n_ffn)])
        out["attention_heads"]["act"] = stack([get(f"attention.{k}", nq) for k in range(n_att)])
        if self.wants("attention_heads", "act_out"):
            out["attention_heads"]["act_out"] = stack([get(f"attention_out.{k}", nq) for k in range(n_att)])
        x = [get(f"mamba_heads.{k}", hm) for k in range(n_m)]
        norms = [self.out_norms.get(k, torch.zeros(hm, dtype=torch.float64)) for k in range(n_m)]
        out["mamba_heads"]["x"] = stack(x)
        out["mamba_heads"]["x_out"] = stack([width.mamba_head_scores(x[k], norms[k]) for k in range(n_m)])
        for k in range(n_m):
            gated = [s for s in ("mamba_gated", "mamba_gated_out", "mamba_gated_channels") if f"{s}.{k}" in self.stats]
            if f"mamba_heads.{k}" in self.stats and self._gated_wanted() and not gated:
                raise RuntimeError("the gated Mamba signals need out_proj called as a module, and this Mamba path "
                                   "fuses it; use --width-metric mamba_heads=x_out,mamba_head_dim=x")
        for name, stat in (("gated", "mamba_gated"), ("gated_out", "mamba_gated_out")):
            if self.wants("mamba_heads", name):
                out["mamba_heads"][name] = stack([get(f"{stat}.{k}", hm) for k in range(n_m)])
        for name, stat in (("x", "mamba_channels"), ("gated", "mamba_gated_channels")):
            if self.wants("mamba_head_dim", name):
                out["mamba_head_dim"][name] = stack([width.mamba_head_dim_scores(get(f"{stat}.{k}", inner), hm)
                                                     for k in range(n_m)])
        return out

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
