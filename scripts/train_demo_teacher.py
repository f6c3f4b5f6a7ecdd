"""Train a bundled demo teacher: a small Nemotron-H with its own byte-level BPE tokenizer (or the first teacher's).

Reads the corpus written by `scripts/build_demo_corpus.py` (train.txt, heldout.txt), trains a
tokenizer on train.txt (or reuses one: `--tokenizer DIR`), then a small hybrid `NemotronHForCausalLM` (transformers' own class, built
from a config dict; the pure-PyTorch Mamba path on CPU) with plain next-token loss, AdamW and a
cosine schedule with warm-up, bounded by `--minutes` of wall-clock time and `--max-steps`. The LR
schedule is laid out over the number of steps that fit the budget at the speed measured so far
(re-estimated every 25 steps, as the machine is shared), so that a time-bounded run still ends its
cosine decay. Writes an ordinary Hugging Face directory (safetensors,
config, generation config, tokenizer) with a model card README.md and `training.json`.

    python scripts/train_demo_teacher.py                       # ~25 minutes, 1 CPU thread
    python scripts/train_demo_teacher.py --minutes 1 --out /tmp/teacher --probe   # speed probe
    python scripts/train_demo_teacher.py --moe      # the MoE teacher (moe-teacher/), the first teacher's tokenizer

`--moe` trains the second teacher: MoE blocks (`E`: 16 routed experts, top-2, a shared expert)
between Mamba-2 and attention layers, as in Nemotron 3 Nano, saved in bf16 (the router in float32,
as transformers keeps it). The routed experts are kept in balance the auxiliary-loss-free way of
DeepSeek-V3 (and Nemotron 3): after every step each router's `e_score_correction_bias` moves by
`--balance-rate` towards the mean load (up for an expert that got fewer tokens than the mean, down
for one that got more); the bias only chooses experts, it never scales their outputs.

Everything is seeded: data order, initialisation and the tokenizer are reproducible; the number of
steps a time budget allows depends on the machine (pass --max-steps with a large --minutes to fix it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

from minitron.testing import NEMOTRON_H_FIXED

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "minitron" / "assets" / "demo" / "corpus"
DEFAULT_OUT = REPO / "minitron" / "assets" / "demo" / "teacher"
MOE_OUT = REPO / "minitron" / "assets" / "demo" / "moe-teacher"
# `--moe`: the defaults of the MoE teacher (each still overridable on the command line).
MOE_DEFAULTS = {"out": MOE_OUT, "tokenizer": DEFAULT_OUT, "hidden": 128, "pattern": "MEM*EME", "heads": 4,
                "kv_heads": 2, "mamba_heads": 8, "mamba_head_dim": 32, "groups": 2, "state": 32, "experts": 16,
                "experts_per_token": 2, "moe_ffn": 64, "shared_ffn": 128, "dtype": "bfloat16"}
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2


def teacher_config(vocab_size: int, hidden: int, pattern: str, ffn: int, heads: int, kv_heads: int,
                   mamba_heads: int, mamba_head_dim: int, groups: int, state: int, seq_len: int,
                   moe: dict | None = None) -> dict:
    """The config dict of a demo teacher (GQA; several Mamba groups; MoE fields when `moe` is given)."""
    cfg = {
        "architectures": ["NemotronHForCausalLM"],
        "model_type": "nemotron_h",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "mamba_num_heads": mamba_heads,
        "mamba_head_dim": mamba_head_dim,
        "n_groups": groups,
        "ssm_state_size": state,
        "conv_kernel": 4,
        "expand": 2,
        "chunk_size": 64,
        **NEMOTRON_H_FIXED,
        "attention_bias": False,
        "layer_norm_epsilon": 1e-5,
        "residual_in_fp32": False,
        "max_position_embeddings": max(1024, seq_len),
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "rescale_prenorm_residual": True,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "mamba_ssm_cache_dtype": "float32",
        "time_step_limit": [0.0, 1e30],
        "hybrid_override_pattern": pattern,
        "num_hidden_layers": len(pattern),
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if moe:  # Nemotron 3 Nano's MoE: sigmoid router, top-k renormalised, one shared expert, no groups
        cfg.update({
            "n_routed_experts": moe["experts"],
            "num_experts_per_tok": moe["experts_per_token"],
            "moe_intermediate_size": moe["moe_ffn"],
            "moe_shared_expert_intermediate_size": moe["shared_ffn"],
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.0,
        })
    return cfg


def load_tokenizer(path: Path):
    """The tokenizer saved in an earlier teacher's directory (so two teachers share one vocabulary)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


def _counter(counts):
    """A forward hook on transformers' router (it returns logits, top-k weights, top-k indices [N, K])
    that adds the tokens sent to each expert to `counts` [E]."""
    import torch

    def hook(_module, _inputs, out):
        counts.add_(torch.bincount(out[2].reshape(-1), minlength=counts.numel()).to(counts.dtype))

    return hook


class Balancer:
    """Auxiliary-loss-free expert balancing (DeepSeek-V3, sec. 2.1.2): count the tokens each router sends
    to each expert during a step, then move its `e_score_correction_bias` by `rate` towards the mean load."""

    def __init__(self, model, rate: float):
        import torch

        self.rate = rate
        self.routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
        self.counts = [torch.zeros(r.e_score_correction_bias.numel()) for r in self.routers]
        for r, c in zip(self.routers, self.counts, strict=True):
            r.register_forward_hook(_counter(c))

    def step(self) -> float:
        """Update the biases from this step's loads; -> the worst layer's max load / mean load."""
        import torch

        worst = 0.0
        with torch.no_grad():
            for r, c in zip(self.routers, self.counts, strict=True):
                mean = c.mean()
                worst = max(worst, float(c.max() / mean.clamp_min(1e-9)))
                r.e_score_correction_bias.add_(self.rate * torch.sign(mean - c))
                c.zero_()
        return worst


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE (no unknown tokens) trained on `text`; a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=1 << 30)


def token_blocks(tokenizer, text: str, seq_len: int):
    """Tokenise `text` as one document (as `minitron.data` does for a .txt file) and cut [n, seq_len] blocks."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len), len(ids)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def evaluate(model, blocks, batch: int) -> float:
    """Mean next-token loss (nats) over all `blocks`."""
    import torch

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch):
            x = blocks[i:i + batch]
            logits = model(input_ids=x).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                     reduction="sum")
            tot += loss.item()
            n += x[:, 1:].numel()
    model.train()
    return tot / n


def active_params(model) -> int:
    """Parameters one token runs through: all but the routed experts, plus `num_experts_per_tok` of them."""
    cfg = model.config
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return sum(p.numel() for p in model.parameters()) - routed + routed * cfg.num_experts_per_tok // cfg.n_routed_experts


def expert_load(model, blocks, batch: int) -> list[list[float]]:
    """Per MoE layer, the share of the held-out token slots each routed expert receives (sums to 1)."""
    import torch

    routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
    counts = [torch.zeros(r.e_score_correction_bias.numel()) for r in routers]
    hooks = [r.register_forward_hook(_counter(c)) for r, c in zip(routers, counts, strict=True)]
    model.eval()
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch):
            model(input_ids=blocks[i:i + batch])
    for h in hooks:
        h.remove()
    return [[round(float(v), 4) for v in c / c.sum()] for c in counts]


def sample(model, tokenizer, prompt: str, n: int = 60) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=True, temperature=0.8, top_k=40,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget of the training loop")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--pattern", default="M-M*M-M*M-")
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--mamba-heads", type=int, default=16)
    ap.add_argument("--mamba-head-dim", type=int, default=16)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--state", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--eval-blocks", type=int, default=64, help="held-out blocks for the validation loss")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the saved weights")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse the tokenizer saved in this directory instead of training one")
    ap.add_argument("--moe", action="store_true",
                    help="the MoE teacher: MoE defaults (moe-teacher/, the first teacher's tokenizer, bf16)")
    ap.add_argument("--experts", type=int, default=0, help="routed experts per MoE layer (E in --pattern)")
    ap.add_argument("--experts-per-token", type=int, default=2)
    ap.add_argument("--moe-ffn", type=int, default=64, help="neurons of each routed expert")
    ap.add_argument("--shared-ffn", type=int, default=128,
                    help="neurons of the shared expert (>= 1: NemotronH always has one)")
    ap.add_argument("--balance-rate", type=float, default=1e-3,
                    help="step of the auxiliary-loss-free balancing of e_score_correction_bias")
    ap.add_argument("--probe", action="store_true", help="only measure tokens/s for --minutes; write nothing")
    ap.add_argument("--rewrite-card", action="store_true", help="only rewrite README.md of --out from training.json")
    if argv is None:
        argv = sys.argv[1:]
    if "--moe" in argv:  # the MoE defaults, under whatever the command line sets explicitly
        ap.set_defaults(**MOE_DEFAULTS)
    args = ap.parse_args(argv)
    if "E" in args.pattern and args.experts < 1:
        ap.error("--pattern has MoE layers (E): give --experts (or --moe)")
    if "E" in args.pattern and args.shared_ffn < 1:
        # transformers' NemotronHMLP takes `intermediate_size or config.intermediate_size`: a 0-wide shared
        # expert would silently become an --ffn-wide one. Nemotron-H has no MoE block without a shared expert.
        ap.error("--shared-ffn must be >= 1: transformers' NemotronH always builds a shared expert "
                 "(0 would silently give it --ffn neurons); use a small one, e.g. 16")
    if args.rewrite_card:
        return rewrite_card(args.out)

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    train_text = (args.corpus / "train.txt").read_text("utf-8")
    heldout_text = (args.corpus / "heldout.txt").read_text("utf-8")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else train_tokenizer(train_text, args.vocab)
    train, n_train_tokens = token_blocks(tokenizer, train_text, args.seq_len + 1)
    val, n_val_tokens = token_blocks(tokenizer, heldout_text, args.seq_len)
    val = val[: args.eval_blocks]
    print(f"tokenizer: vocab {len(tokenizer)}; train {n_train_tokens:,} tokens ({len(train_text.encode()) / n_train_tokens:.2f} "
          f"bytes/token), {train.shape[0]} blocks; heldout {n_val_tokens:,} tokens, {val.shape[0]} eval blocks "
          f"[{time.time() - t_start:.0f}s]", file=sys.stderr)

    cfg = teacher_config(len(tokenizer), args.hidden, args.pattern, args.ffn, args.heads, args.kv_heads,
                         args.mamba_heads, args.mamba_head_dim, args.groups, args.state, args.seq_len,
                         moe=vars(args) if "E" in args.pattern else None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, pattern {args.pattern}", file=sys.stderr)
    balancer = Balancer(model, args.balance_rate) if "E" in args.pattern else None
    imbalance = None

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(train.shape[0], generator=g)
    budget_s = args.minutes * 60
    total_steps = args.max_steps  # re-estimated from measured speed after the first steps
    model.train()
    t0 = time.time()
    step, pos, epoch, ema = 0, 0, 0, None
    history = []
    while step < total_steps:
        if pos + args.batch > len(order):
            order, pos, epoch = torch.randperm(train.shape[0], generator=g), 0, epoch + 1
        x = train[order[pos:pos + args.batch]]
        pos += args.batch
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total_steps, args.lr, args.warmup)
        logits = model(input_ids=x[:, :-1]).logits  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if balancer is not None:
            imbalance = balancer.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        elapsed = time.time() - t0
        if step == 20 or (step > 20 and step % 25 == 0):
            # Lay the schedule out over the steps that fit the budget at the speed measured so far
            # (re-estimated as the run goes: the machine is shared, so the speed drifts).
            total_steps = min(args.max_steps, max(step + 1, int(budget_s / (elapsed / step))))
        if step == 20:
            print(f"{elapsed / step:.2f}s/step, {args.batch * args.seq_len * step / elapsed:,.0f} tokens/s "
                  f"-> {total_steps} steps in {args.minutes:g} min", file=sys.stderr)
            if args.probe:
                return
        if step % 50 == 0 or step == total_steps:
            history.append({"step": step, "train_loss_ema": round(ema, 4), "seconds": round(elapsed, 1)}
                           | ({"max_expert_load": round(imbalance, 2)} if imbalance is not None else {}))
            print(f"step {step}/{total_steps} loss {ema:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  + (f"max load {imbalance:.2f}x mean " if imbalance is not None else "")
                  + f"[{elapsed / 60:.1f} min]", file=sys.stderr)
        if elapsed > budget_s * 1.1:
            break
    train_seconds = time.time() - t0
    tokens_seen = step * args.batch * args.seq_len
    val_loss = evaluate(model, val, args.batch)
    tail = train[order[:args.eval_blocks]][:, :-1]
    train_loss = evaluate(model, tail, args.batch)
    print(f"done: {step} steps, {tokens_seen:,} tokens, {train_seconds / 60:.1f} min; "
          f"train loss {train_loss:.3f}, val loss {val_loss:.3f} (uniform {math.log(len(tokenizer)):.3f})",
          file=sys.stderr)

    model.eval()
    samples = {p: sample(model, tokenizer, p) for p in ["The list", "A dictionary is", "To open a file,"]}
    for s in samples.values():
        print("  >>", s.replace("\n", " "), file=sys.stderr)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.to(getattr(torch, args.dtype))
    for m in model.modules():  # the router stays float32, as transformers keeps it (_keep_in_fp32_modules_strict)
        if hasattr(m, "e_score_correction_bias"):
            m.float()
    model.save_pretrained(out, safe_serialization=True)
    if args.tokenizer:  # the reused tokenizer's files verbatim: both teachers carry the same bytes
        for f in sorted(args.tokenizer.glob("tokenizer*.json")) + sorted(args.tokenizer.glob("special_tokens_map.json")):
            shutil.copyfile(f, out / f.name)
    else:
        tokenizer.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=0.8,
                     top_k=40, max_new_tokens=64).save_pretrained(out)
    command = "python scripts/train_demo_teacher.py " + " ".join(shlex.quote(a) for a in argv)
    record = {
        "command": command.strip(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "parameters": n_params,
        "steps": step,
        "epochs_started": epoch + 1,
        "tokens_seen": tokens_seen,
        "train_corpus_tokens": n_train_tokens,
        "heldout_corpus_tokens": n_val_tokens,
        "train_seconds": round(train_seconds, 1),
        "train_loss": round(train_loss, 4),
        "val_loss": round(val_loss, 4),
        "val_blocks": int(val.shape[0]),
        "uniform_loss": round(math.log(len(tokenizer)), 4),
        **({"active_parameters": active_params(model), "expert_load": expert_load(model, val, args.batch)}
           if balancer is not None else {}),
        "history": history,
        "samples": samples,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(model_card(record, cfg))
    print(f"wrote {out}", file=sys.stderr)


def model_card(r: dict, cfg: dict) -> str:
    """The model card (README.md) from the training record and the config."""
    pat = r["args"]["pattern"]  # transformers 5 saves the pattern as `layers_block_type`
    n = {c: pat.count(c) for c in "M-*E"}
    a = r["args"]
    samples = "\n".join(f"- *{p}* → {' '.join(s.split())}" for p, s in r["samples"].items())
    moe = "E" in pat
    kinds = [f"{n['M']} Mamba-2"] + [f"{n[c]} {w}" for c, w in (("-", "MLP"), ("*", "attention"), ("E", "MoE")) if n[c]]
    if moe:
        title, mix, tags, which = "minitron demo MoE teacher", "Mamba-2 + MoE + attention", "moe, ", "`minitron demo --teacher moe`"
        width = (f"| routed experts | {cfg['n_routed_experts']} per MoE layer × {cfg['moe_intermediate_size']} neurons (relu²), "
                 f"top-{cfg['num_experts_per_tok']}, sigmoid router, top-k weights renormalised |\n"
                 f"| shared expert | 1 per MoE layer × {cfg['moe_shared_expert_intermediate_size']} neurons |\n"
                 f"| active parameters | {r['active_parameters']:,} per token (all but the routed experts, plus "
                 f"{cfg['num_experts_per_tok']} of them) |\n| hidden | {cfg['hidden_size']} |")
        vocab = "the first demo teacher's (`../teacher/`), byte-level BPE trained on the training text"
        weights = f"{a['dtype']} (router weight and correction bias float32, as transformers keeps them), one safetensors file"
        load = [max(layer) * len(layer) for layer in r["expert_load"]]
        balance = (f"; auxiliary-loss-free expert balancing (`e_score_correction_bias` moved by {a['balance_rate']} "
                   f"towards the mean load after each step; held-out load of the busiest expert "
                   f"{min(load):.2f}–{max(load):.2f} × the mean)")
    else:
        title, mix, tags, which = "minitron demo teacher", "Mamba-2 + MLP + attention", "", "`minitron demo`"
        width = f"| hidden / FFN | {cfg['hidden_size']} / {cfg['intermediate_size']} (relu²) |"
        vocab = "byte-level BPE trained on the training text"
        weights = f"{a['dtype']}, one safetensors file"
        balance = ""
    return f"""---
license: psf-2.0
library_name: transformers
tags: [nemotron_h, mamba2, hybrid, {tags}minitron-demo]
---

# {title}

A small Nemotron-H hybrid ({mix}) trained from scratch by minitron as the
bundled model of {which}: something real to score, prune, distill and evaluate offline in
minutes. It is a toy: it writes Python-documentation-flavoured English, not correct facts.

| | |
|---|---|
| class | `NemotronHForCausalLM` (stock transformers) |
| parameters | {r['parameters']:,} |
| layers | {len(pat)}: `{pat}` ({', '.join(kinds)}) |
{width}
| attention | {cfg['num_attention_heads']} query heads, {cfg['num_key_value_heads']} KV heads (GQA), head dim {cfg['head_dim']} |
| Mamba-2 | {cfg['mamba_num_heads']} heads × {cfg['mamba_head_dim']}, {cfg['n_groups']} groups, state {cfg['ssm_state_size']} |
| vocabulary | {cfg['vocab_size']}, {vocab}; `<pad>`=0, `<s>`=1, `</s>`=2 |
| embeddings | untied |
| weights | {weights} |

## Corpus

Plain text extracted from the reST sources of the Python 3.11 documentation (Debian
`python3.11-doc`, PSF License; see `../corpus/LICENSE`) by `scripts/build_demo_corpus.py`:
{r['train_corpus_tokens']:,} training tokens (`../corpus/train.txt`) and {r['heldout_corpus_tokens']:,} held-out
tokens (`../corpus/heldout.txt`; whole documents held out, paragraphs deduplicated across both).

## Training

Next-token cross-entropy; AdamW (β 0.9/0.95, weight decay {a['weight_decay']} on matrices), peak LR {a['lr']},
{a['warmup']} warm-up steps then cosine decay to a tenth; batch {a['batch']} × {a['seq_len']} tokens; gradient
clipping 1.0{balance}; seed {a['seed']}; {a['threads']} CPU thread(s) on a shared 2-core machine; torch
{r['versions']['torch']}, transformers {r['versions']['transformers']}.

| | |
|---|---|
| steps | {r['steps']:,} |
| tokens seen | {r['tokens_seen']:,} |
| wall time | {r['train_seconds'] / 60:.1f} min |
| final train loss | {r['train_loss']:.3f} nats/token ({r['val_blocks']} training blocks) |
| validation loss | {r['val_loss']:.3f} nats/token ({r['val_blocks']} held-out blocks of {a['seq_len']} tokens) |
| uniform baseline | {r['uniform_loss']:.3f} nats/token (ln vocabulary) |

Samples (temperature 0.8, top-k 40):

{samples}

Reproduce (after `apt-get install python3.11-doc` and `python scripts/build_demo_corpus.py`):

```
{r['command']}
```

`training.json` holds the full record (arguments, loss history, versions).
"""


def rewrite_card(out: Path) -> None:
    """Rewrite README.md of a trained teacher from its training.json and config.json (no training)."""
    r = json.loads((out / "training.json").read_text())
    (out / "README.md").write_text(model_card(r, json.loads((out / "config.json").read_text())))


if __name__ == "__main__":
    main()
