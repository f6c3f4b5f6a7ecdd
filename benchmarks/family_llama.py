"""A small *trained* non-Nemotron model through minitron: Minitron ranking vs random ranking (issue 14).

Trains a small Llama (transformers' own `LlamaForCausalLM`, built from a config; the demo teacher's
tokenizer and corpus) with plain next-token loss for `--steps` steps, then scores it with
`minitron score` (in memory) and prunes it to one width shape and one depth with the Minitron
scores and with seeded random rankings. Reports held-out loss and KL to the unpruned model right
after pruning (no distillation), on the first `--eval-samples` blocks of the held-out corpus.

    python benchmarks/family_llama.py                 # 1200 training steps; ~5 CPU minutes (BENCHMARKS.md)
    python benchmarks/family_llama.py --steps 20 --eval-samples 16 --seeds 1   # a pipeline check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_scores import random_scores, save_scores  # noqa: E402

SEQ_LEN = 128
WIDTH = {"hidden_size": 96, "ffn_size": 192, "attention_heads": 4}  # from 128 / 384 / 8 heads (4 KV)
DROP = 1  # of 4 layers, by the kl layer score (random: a seeded choice)


def llama_config(vocab: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 128,
            "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2}


def train(model, blocks, steps: int, lr: float = 3e-3, batch: int = 8, weight_decay: float = 0.1) -> dict:
    """AdamW, 10 warm-up steps then cosine over a fixed number of steps (the result does not depend on how
    busy the machine is). Weight decay 0.1, as the demo teacher: units the model does not use shrink."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    t0, cpu0, total = time.perf_counter(), time.process_time(), steps
    model.train()
    for step in range(total):
        frac = step / total
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        ids = blocks[torch.randint(0, blocks.shape[0], (batch,), generator=g)]
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return {"steps": total, "tokens": total * batch * SEQ_LEN, "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "final_train_loss": round(loss.item(), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200, help="training steps of 8 x 128 tokens (1.2 M tokens)")
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--score-samples", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3, help="random rankings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from transformers import AutoConfig, AutoModelForCausalLM

    from minitron.cli.demo_cmd import demo_paths
    from minitron.data import load_blocks
    from minitron.distill.trainer import evaluate
    from minitron.models.architecture import Architecture
    from minitron.models.checkpoint import load_model, load_tokenizer
    from minitron.prune.select import Shape
    from minitron.recipes.prune import PruneOptions, prune
    from minitron.recipes.score import ScoreOptions, score_model

    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-llama-"))
    demo_teacher, train_txt, heldout_txt = demo_paths()
    tok = load_tokenizer(demo_teacher)
    train_blocks = load_blocks([train_txt], tok, seq_len=SEQ_LEN)
    eval_blocks = load_blocks([heldout_txt], tok, seq_len=SEQ_LEN)[: args.eval_samples]

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**llama_config(len(tok))), dtype=torch.float32)
    trained = train(model, train_blocks, args.steps)
    teacher_dir = work / "llama"
    model.save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    teacher = load_model(teacher_dir, dtype="fp32", device="cpu")

    def ev(path) -> dict:
        r = evaluate(teacher, load_model(path, dtype="fp32", device="cpu"), eval_blocks, micro_batch_size=8)
        return {"loss": round(r["loss"], 4), "kl": round(r["kl"], 4)}

    res = {"trained": trained, "params": sum(p.numel() for p in teacher.parameters()), "teacher": ev(teacher_dir)}
    scores = score_model(teacher_dir, [str(train_txt)], ScoreOptions(
        samples=args.score_samples, seq_len=SEQ_LEN, batch_size=8, device="cpu", dtype="fp32", streaming=False)).scores
    (work / "minitron").mkdir(parents=True, exist_ok=True)
    scores.save(work / "minitron")
    rankings = {"minitron": work / "minitron"}
    arch = Architecture.from_path(teacher_dir)
    for seed in range(args.seeds):
        path = save_scores(random_scores(arch, seed), work / f"random-{seed}", model_dir=teacher_dir)
        rankings[f"random-{seed}"] = path.parent
    rows = []
    for name, sdir in rankings.items():
        for kind, opts in (("width", {"shape": Shape(**WIDTH)}), ("depth", {"num_layers": 4 - DROP})):
            out = work / f"{name}-{kind}"
            doc = prune(PruneOptions(model=teacher_dir, out=out, scores=sdir, device="cpu", **opts))
            rows.append({"ranking": name, "cut": kind, "params": doc["params_after"],
                         "dropped": doc["plan"]["dropped_layers"], **ev(out)})
    res["rows"] = rows
    (work / "family_llama.json").write_text(json.dumps(res, indent=2) + "\n")
    t = res["teacher"]
    print(f"trained Llama: {res['params']:,} parameters, {trained['steps']} steps / {trained['tokens']:,} tokens "
          f"in {trained['seconds']} s; held-out loss {t['loss']}\n")
    print("| cut | ranking | params | held-out loss | KL to unpruned | dropped layers |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cut']} | {r['ranking']} | {r['params']:,} | {r['loss']} | {r['kl']} | {r['dropped']} |")
    print(f"\nresults: {work / 'family_llama.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
