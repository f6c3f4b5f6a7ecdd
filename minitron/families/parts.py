"""Tensors and parameter counts of the two pieces most families share: Llama-style attention and a
gated MLP (gate, up, down). The dense families keep their own copy (q/k norms, per-variant biases).

    q_proj.weight         [nq · d] x in       o_proj.weight   out x [nq · d]
    k_proj/v_proj.weight  [nkv · d] x in      (query head j reads KV head j // (nq / nkv))
    gate_proj/up_proj     [ffn] x hidden      down_proj.weight  hidden x [ffn]

`in` is one segment list: the hidden channels for every family but Zamba2, whose shared block reads
`[hidden | embeddings]` (two hidden segments).
"""

from __future__ import annotations

from minitron.models.tensors import FFN, HIDDEN, KV, Q, TensorSpec, fixed, one


def stacked_model_specs(family, arch, layout: str, final_norm: str) -> list[TensorSpec]:
    """`embed_tokens`, every layer's tensors (`family.layer_specs`), the final norm, and `lm_head` unless tied."""
    vocab, h = fixed(arch.vocab_size), one(HIDDEN, arch.hidden_size)
    specs = [TensorSpec("embed_tokens.weight", None, (vocab, h))]
    for i, c in enumerate(arch.pattern):
        specs += family.layer_specs(arch, i, c, layout)
    specs.append(TensorSpec(final_norm + ".weight", None, (h,)))
    if not arch.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", None, (vocab, h)))
    return specs


def written_config(arch, ffn_key: str = "intermediate_size", **fields) -> dict:
    """The original config with the sizes every family with attention writes back (hidden, FFN width under
    `ffn_key`, query and KV heads), then the family's own `fields`, in that order."""
    cfg = dict(arch.raw)
    cfg.update({"hidden_size": arch.hidden_size, ffn_key: arch.intermediate_size,
                "num_attention_heads": arch.num_attention_heads, "num_key_value_heads": arch.num_key_value_heads,
                **fields})  # fmt: skip
    return cfg


def params_table(arch, components: tuple[str, ...], norm: int, **blocks: int) -> dict[str, int]:
    """Parameters per component: the embedding, `lm_head` (0 when tied: the embedding, counted once), the
    family's `blocks`, the norms, and their `total` over `components`."""
    emb = arch.vocab_size * arch.hidden_size
    out = {"embedding": emb, "lm_head": 0 if arch.tie_word_embeddings else emb, **blocks, "norm": norm}
    out["total"] = sum(out[c] for c in components)
    return out


def attention_specs(a, s: str, i: int, h_in, h_out, *, bias: bool = False, o_bias: bool = False) -> list[TensorSpec]:
    """q/k/v/o of one attention module under `s` (e.g. `layers.3.self_attn.`)."""
    q, kv = one(Q, a.num_attention_heads * a.head_dim), one(KV, a.num_key_value_heads * a.head_dim)
    specs = [TensorSpec(s + "q_proj.weight", i, (q, h_in)), TensorSpec(s + "k_proj.weight", i, (kv, h_in)),
             TensorSpec(s + "v_proj.weight", i, (kv, h_in)), TensorSpec(s + "o_proj.weight", i, (h_out, q))]
    if bias:
        specs += [TensorSpec(s + "q_proj.bias", i, (q,)), TensorSpec(s + "k_proj.bias", i, (kv,)),
                  TensorSpec(s + "v_proj.bias", i, (kv,))]
    if o_bias:
        specs.append(TensorSpec(s + "o_proj.bias", i, (h_out,)))
    return specs


def attention_params(a, h_in: int, *, bias: bool = False, o_bias: bool = False) -> int:
    q, kv, h = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim, a.hidden_size
    return h_in * (q + 2 * kv) + q * h + ((q + 2 * kv) if bias else 0) + (h if o_bias else 0)


def gated_mlp_specs(a, m: str, i: int, h, *, bias: bool = False) -> list[TensorSpec]:
    """gate/up/down of one MLP under `m` (e.g. `layers.3.feed_forward.`)."""
    ffn = one(FFN, a.intermediate_size)
    specs = [TensorSpec(m + "gate_proj.weight", i, (ffn, h)), TensorSpec(m + "up_proj.weight", i, (ffn, h)),
             TensorSpec(m + "down_proj.weight", i, (h, ffn))]
    if bias:
        specs += [TensorSpec(m + "gate_proj.bias", i, (ffn,)), TensorSpec(m + "up_proj.bias", i, (ffn,)),
                  TensorSpec(m + "down_proj.bias", i, (h,))]
    return specs


def gated_mlp_params(a, *, bias: bool = False) -> int:
    h, f = a.hidden_size, a.intermediate_size
    return 3 * h * f + ((2 * f + h) if bias else 0)
