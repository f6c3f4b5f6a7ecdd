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
    from minitron.recipes.score import score_tensors
    from minitron.models.block_stream import StreamingSource

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
