"""The scoring pass: run a model block by block over token blocks, collecting width statistics and
skip-one-block layer metrics in one go.

A *source* provides the model's pieces as context managers, so the same loop runs an in-memory model
(`InMemorySource`, batch-major: each micro-batch goes through every layer) and a model streamed from
its safetensors files (`minitron.models.block_stream.StreamingSource`, layer-major: each block is materialised
once and applied to every micro-batch, then freed).

Per micro-batch, with h the running hidden state [B, T, hidden]:

    h = embed(tokens)
    for block j:                          (blocks in `skip` are left out everywhere)
        y = block_j(h)                    width hooks collect here; cosine(h, y) for layer j
        branch[i] = block_j(branch[i])    for every live branch i < j (hooks off)
        branch[j] = h                     block j skipped: its branch starts from its input
        h = y
    logits = lm_head(norm_f(h)); for each branch i: metrics(logits, lm_head(norm_f(branch[i])))

The head is evaluated in chunks of `HEAD_ROWS` tokens, so [B, T, vocab] logits never exist at once.
"""

from __future__ import annotations

import contextlib

import torch

from minitron.importance.depth import (
    LAYER_METRICS,
    LOGIT_METRICS,
    cosine_distance,
    finalize_layer_scores,
    mse_per_token,
)
from minitron.losses.reference import kl_from_logp, nll_from_logp
from minitron.progress import report

HEAD_ROWS = 1024


class InMemorySource:
    """The pieces of a loaded transformers model (nothing to load or free)."""

    layer_major = False

    def __init__(self, model):
        from minitron.families import get_family

        self.model = model
        self.config = model.config
        self.family = get_family(model.config.model_type)
        self.num_layers = len(model.model.layers)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    @contextlib.contextmanager
    def embedding(self):
        yield getattr(self.model.model, self.family.modules.embedding)

    @contextlib.contextmanager
    def block(self, j: int):
        yield self.model.model.layers[j]

    @contextlib.contextmanager
    def head(self):
        yield getattr(self.model.model, self.family.modules.final_norm), self.model.lm_head


def block_kwargs(source, h) -> dict:
    """What the family needs to call any block directly on [B, T, hidden] states (no padding)."""
    return source.family.prepare_blocks(source.model, source.config, h)


def _call_block(source, blk, j, h, kw):
    return source.family.call_block(blk, j, h, kw)


def run_engine(source, tokens, *, batch_size: int, layer_metric: str | None, skip=frozenset(), stats,
               collector=None, progress=None) -> None:
    """Run `tokens` [S, T] through `source`, adding partial sums to `stats` (and to `collector`'s)."""
    n = tokens.shape[0]
    n_layers = source.num_layers
    micro = [tokens[s : s + batch_size] for s in range(0, n, batch_size)]
    chunks = [micro] if source.layer_major else [[m] for m in micro]
    total = len(chunks) * (n_layers + 1)
    done = 0

    def step():
        nonlocal done
        done += 1
        report(progress, "score", done, total)

    with torch.inference_mode():
        first = 0  # index of the chunk's first micro-batch (its parity splits the statistics in halves)
        for chunk in chunks:
            _run_chunk(source, chunk, layer_metric, frozenset(skip), stats, collector, step, first)
            first += len(chunk)
        stats.odd = False


def _run_chunk(source, micro, layer_metric, skip, stats, collector, step, first: int = 0) -> None:
    n_layers = source.num_layers
    branches_on = layer_metric in LOGIT_METRICS
    dev = source.device
    with source.embedding() as emb:
        scale = source.family.embedding_scale(source.config)
        states = [(emb(t.to(dev)) * scale if scale != 1.0 else emb(t.to(dev))).to(source.dtype) for t in micro]
    kws = [block_kwargs(source, h) for h in states]
    branches: dict[int, list] = {}
    cos = torch.zeros(n_layers, dtype=torch.float64)
    for j in range(n_layers):
        if j in skip:
            step()
            continue
        with source.block(j) as blk:
            for m, h in enumerate(states):
                stats.odd = (first + m) % 2 == 1
                if collector is not None:
                    collector.enabled = True
                y = _call_block(source, blk, j, h, kws[m])
                if collector is not None:
                    collector.enabled = False
                cos[j] += cosine_distance(h, y).double().sum().cpu()
                for i, br in branches.items():
                    if i < j:  # branch j (block j skipped) starts after this block
                        br[m] = _call_block(source, blk, j, br[m], kws[m])
                if branches_on:
                    branches.setdefault(j, [None] * len(states))[m] = h
                states[m] = y
        step()
    for m, t in enumerate(micro):  # per micro-batch, so that each half counts its own (integers: exact)
        stats.odd = (first + m) % 2 == 1
        stats.add("samples", torch.tensor([float(t.shape[0])]))
        stats.add("tokens", torch.tensor([float(t.numel())]))
    stats.odd = False
    stats.add("pred_tokens", torch.tensor([float(sum(t.shape[0] * (t.shape[1] - 1) for t in micro))]))
    stats.add("layer_cosine", cos)
    with source.head() as (norm_f, head):
        div = source.family.logits_divisor(source.config)
        lm_head = head if div == 1.0 else (lambda x: head(x) / div)
        kl, mse, loss = (torch.zeros(n_layers, dtype=torch.float64) for _ in range(3))
        ref_loss = torch.zeros(1, dtype=torch.float64)
        for m, tok in enumerate(micro):
            stats.odd = (first + m) % 2 == 1
            normed = norm_f(states[m])
            if collector is not None:
                collector.enabled = True
                collector.add_final(normed, states[m])
                collector.enabled = False
            if not branches_on:
                continue
            tok = tok.to(dev)
            branch_normed = {i: norm_f(br[m]) for i, br in branches.items()}
            for b, s, e in _head_chunks(tok.shape):
                ref = lm_head(normed[b, s:e]).float()  # [rows, V]
                ref_logp = torch.log_softmax(ref, dim=-1)
                ref_p = ref_logp.exp()
                tgt = tok[b, s + 1 : e + 1]  # next tokens; the last position has none
                ref_loss += nll_from_logp(ref_logp, tgt).double().sum().cpu()
                for i, bn in branch_normed.items():
                    logits = lm_head(bn[b, s:e]).float()
                    logp = torch.log_softmax(logits, dim=-1)
                    kl[i] += kl_from_logp(ref_logp, ref_p, logp).double().sum().cpu()
                    mse[i] += mse_per_token(ref, logits).double().sum().cpu()
                    loss[i] += nll_from_logp(logp, tgt).double().sum().cpu()
        stats.odd = False
        if branches_on:
            stats.add("layer_kl", kl)
            stats.add("layer_mse", mse)
            stats.add("layer_loss", loss)
            stats.add("ref_loss", ref_loss)
    step()


def _head_chunks(shape, rows: int = HEAD_ROWS):
    """(sample, start, end) token ranges of at most `rows` tokens covering a [B, T] batch."""
    b_n, t_n = shape
    for b in range(b_n):
        for s in range(0, t_n, rows):
            yield b, s, min(s + rows, t_n)


def stat_shapes(n_layers: int, layer_metric: str | None) -> dict:
    """The engine's own statistics (for the cross-rank reduction)."""
    shapes = {"samples": (1,), "tokens": (1,), "pred_tokens": (1,), "layer_cosine": (n_layers,)}
    if layer_metric in LOGIT_METRICS:
        shapes.update(layer_kl=(n_layers,), layer_mse=(n_layers,), layer_loss=(n_layers,), ref_loss=(1,))
    return shapes


def layer_scores(model, blocks, metric: str = "kl", batch_size: int = 8, skip=frozenset(), progress=None):
    """Importance of every layer of an in-memory `NemotronHForCausalLM` -> [num_layers] float32.

    `blocks`: [n_samples, seq_len] token ids. `skip`: layers already removed; they are skipped in
    every pass (the model is evaluated as if they were gone) and score 0. `progress`: the progress
    protocol (`minitron.progress`), stage `score`, in layer passes.
    """
    from minitron.importance.aggregate import Stats
    from minitron.models.architecture import Architecture

    if metric not in LAYER_METRICS:
        raise ValueError(f"unknown layer metric {metric!r} (expected one of {', '.join(LAYER_METRICS)})")
    arch = Architecture.from_config(model.config.to_dict())
    source = InMemorySource(model)
    stats = Stats()
    run_engine(source, blocks, batch_size=batch_size, layer_metric=metric, skip=frozenset(skip), stats=stats,
               collector=None, progress=progress)
    return finalize_layer_scores(stats, arch.num_layers, frozenset(skip))[metric]
