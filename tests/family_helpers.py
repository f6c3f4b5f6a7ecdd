"""What every family's tests run on its tiny model: logits, a zeroed copy, the scoring engine's
block-by-block pass, the bytes of transformers' cache, and scores in memory vs streamed."""

from __future__ import annotations

import copy

import torch

IDS = torch.randint(3, 384, (2, 20), generator=torch.Generator().manual_seed(0))
SCORE_TOKENS = torch.randint(3, 384, (4, 16), generator=torch.Generator().manual_seed(2))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def zeroed(model, edit):
    """A copy of `model` with `edit(copy)` applied under no_grad (units zeroed by hand)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def random_scores(arch, seed: int = 1):
    from minitron.importance.scores import Scores, expected_shapes

    g = torch.Generator().manual_seed(seed)
    return Scores({k: torch.rand(s, generator=g) for k, s in expected_shapes(arch).items()})


def engine_logits(model, ids=IDS):
    """What scoring runs: the embedding, each block called on its own by the family, the head."""
    from minitron.importance.engine import InMemorySource, _call_block, block_kwargs

    src = InMemorySource(model)
    with torch.no_grad():
        with src.embedding() as emb:
            h = emb(ids) * src.family.embedding_scale(src.config)
        kw = block_kwargs(src, h)
        for j in range(src.num_layers):
            with src.block(j) as blk:
                h = _call_block(src, blk, j, h, kw)
        with src.head() as (norm, head):
            return head(norm(h)) / src.family.logits_divisor(src.config)


def captured_input(model, module, toks):
    """What `module` receives in one no-grad forward of `model` on `toks`, as [tokens, features]."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(toks, use_cache=False)
    finally:
        handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])


def cache_bytes(cache) -> tuple[int, int]:
    """(KV bytes, Mamba conv + SSM state bytes) that a transformers cache holds."""
    kv = state = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if torch.is_tensor(t):
                kv += t.numel() * t.element_size()
        for name in ("conv_states", "recurrent_states"):
            for t in (getattr(layer, name, None) or {}).values():
                state += t.numel() * t.element_size()
    return kv, state


def scores(model_or_path, arch, tokens=SCORE_TOKENS) -> dict:
    """Score tensors of an in-memory model, or of a checkpoint directory streamed layer by layer."""
    from minitron.importance.aggregate import Aggregation
    from minitron.importance.engine import InMemorySource
    from minitron.models.block_stream import StreamingSource
    from minitron.recipes.score import score_tensors

    source = StreamingSource(model_or_path) if not isinstance(model_or_path, torch.nn.Module) \
        else InMemorySource(model_or_path)
    out, _, _ = score_tensors(source, arch, tokens, agg=Aggregation(), batch_size=2, layer_metric="kl")
    return out


def scores_streamed_equal_in_memory(path, model, arch) -> dict:
    mem, streamed = scores(model, arch), scores(path, arch)
    assert mem.keys() == streamed.keys()
    for k in mem:
        torch.testing.assert_close(mem[k], streamed[k], rtol=1e-5, atol=1e-6)
    return mem


# ---------------------------------------------------------------------- the checks every family runs
def tiny_family(tmp_path_factory, name: str, cfg: dict, seed: int = 1):
    """(model dir, loaded model, architecture, seeded random scores) of a tiny model of `cfg`, written once."""
    from minitron.models.architecture import Architecture
    from minitron.models.checkpoint import load_model
    from minitron.testing import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path_factory.mktemp(name) / "model", cfg)
    arch = Architecture.from_path(path)
    return path, load_model(path), arch, random_scores(arch, seed)


def assert_specs_match(model, arch, stored) -> None:
    """Accounted parameters equal counted ones (a tied head once); the module's tensors are the module-layout
    specs, name for name and shape for shape; the checkpoint in `stored` holds exactly the checkpoint specs."""
    from minitron.models.checkpoint import open_checkpoint
    from minitron.models.tensors import canonical_name, model_specs

    assert arch.total_params == sum(p.numel() for p in model.parameters())
    got = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if arch.tie_word_embeddings:
        got.pop("lm_head.weight")
    assert got == {k: s.shape for k, s in model_specs(arch, layout="module").items()}
    assert {canonical_name(k) for k in open_checkpoint(stored).tensors} == set(model_specs(arch))


def assert_keep_all_is_identity(model, arch) -> None:
    """Pruning that keeps everything leaves every tensor and the logits bit-identical."""
    from minitron.prune.apply import prune_model
    from minitron.prune.plan import PrunePlan

    pruned = prune_model(model, PrunePlan.keep_all(arch))
    a, b = model.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(logits(model), logits(pruned))


def assert_equals_emulation(pruned, model, edit=None, *, tol: float = 1e-5, changed_atol: float | None = None,
                            want=None) -> None:
    """The pruned model's logits equal those of the original restricted by hand: `edit` applied to a copy
    (or `want`, logits computed by the caller); with `changed_atol`, they also differ from the original's
    by more than that (the cut matters)."""
    want = logits(zeroed(model, edit)) if want is None else want
    torch.testing.assert_close(logits(pruned), want, rtol=tol, atol=tol)
    if changed_atol is not None:
        assert not torch.allclose(logits(pruned), logits(model), atol=changed_atol)


def zero_columns(weight, units, width: int) -> None:
    """Zero the input columns of `weight` ([out, units × width]) that belong to `units`."""
    for u in units:
        weight[:, u * width:(u + 1) * width] = 0


def dropped(n: int, kept) -> list[int]:
    """The units of `range(n)` not in `kept`, in order."""
    return sorted(set(range(n)) - set(kept))


def zero_dropped_heads(plan, arch, o_proj):
    """An edit: every query head `plan` drops gets its o_proj columns zeroed (`o_proj(model, layer)`)."""

    def edit(m):
        for i, kept in plan.q_heads.items():
            zero_columns(o_proj(m, i).weight, dropped(arch.num_attention_heads, kept), arch.head_dim)

    return edit


def ffn_down(layer):
    """The down projection of a decoder layer's MLP: Llama's `mlp.down_proj`, Bamba's and Falcon-H1's
    `feed_forward.down_proj`, Granite's `shared_mlp.output_linear`."""
    mlp = next(m for m in (getattr(layer, a, None) for a in ("mlp", "shared_mlp", "feed_forward")) if m is not None)
    return getattr(mlp, "output_linear", None) or mlp.down_proj


def zero_residual_writes(layers):
    """An edit: the blocks `layers` write nothing into the residual stream - every mixer's output projection
    (`mamba.out_proj`, `self_attn.o_proj`), the MLP's down projection and the routed experts' down
    projections zeroed, biases too - so each is the identity, as a dropped block is."""

    def edit(m):
        for i in layers:
            layer = m.model.layers[i]
            mixers = (getattr(getattr(layer, "mamba", None), "out_proj", None),
                      getattr(getattr(layer, "self_attn", None), "o_proj", None))
            for lin in (*(x for x in mixers if x is not None), ffn_down(layer)):
                lin.weight.zero_()
                if lin.bias is not None:
                    lin.bias.zero_()
            if getattr(layer, "block_sparse_moe", None) is not None:  # Granite's routed experts write too
                layer.block_sparse_moe.experts.down_proj.zero_()

    return edit


def zero_dropped_ffn(plan, arch, down):
    """An edit: every FFN neuron `plan` drops gets its down-projection column zeroed (`down(model, layer)`)."""

    def edit(m):
        for i, kept in plan.ffn.items():
            down(m, i).weight[:, dropped(arch.intermediate_size, kept)] = 0

    return edit


def assert_equals_reference(model, plan, *, buffers: bool = False):
    """The fast cut equals the plain module-by-module reference, tensor for tensor (and buffer for buffer),
    in its logits, and in the parameters the target accounts; -> the pruned model."""
    from minitron.prune.apply import prune_model
    from minitron.prune.reference import reference_prune

    pruned, ref = prune_model(model, plan), reference_prune(model, plan)
    a, b = pruned.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if buffers:  # mup_vector, rotary tables
        for x, y in zip(pruned.buffers(), ref.buffers(), strict=True):
            assert torch.equal(x, y)
    assert torch.equal(logits(pruned), logits(ref))
    assert sum(p.numel() for p in pruned.parameters()) == plan.target().total_params
    return pruned


def assert_generates(model, prompt: int = 5, new: int = 4) -> None:
    assert model.generate(IDS[:1, :prompt], max_new_tokens=new, do_sample=False).shape == (1, prompt + new)


def cache_and_estimate(model, arch, batch: int = 3, ctx: int = 17, **estimate_kw):
    """(KV bytes, Mamba state bytes) of transformers' cache after a `batch` × `ctx` forward, and minitron's
    estimate at that context."""
    from minitron.memory import estimate

    with torch.no_grad():
        out = model(torch.randint(3, 300, (batch, ctx)), use_cache=True)
    kv, state = cache_bytes(out.past_key_values)
    return kv, state, estimate(arch, context_length=ctx, batch_size=batch, **estimate_kw)
