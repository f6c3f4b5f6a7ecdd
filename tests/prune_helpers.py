"""Shared check of the pruning tests: a streamed, pruned checkpoint loads strictly and equals the in-memory cut."""

from __future__ import annotations

import json
from pathlib import Path


def load_streamed(out: Path, model, plan, *, same_logits: bool = False):
    """Write `plan`'s config beside the shards in `out`, load it with stock transformers (strict keys),
    check every tensor equals `prune_model(model, plan)` and the parameter count (with `same_logits`, the
    logits too: buffers rebuilt from the pruned config); return the model."""
    import torch
    from transformers import AutoModelForCausalLM

    from minitron.models.checkpoint import open_checkpoint
    from minitron.prune.apply import prune_model

    (out / "config.json").write_text(json.dumps(plan.target().to_config()))
    open_checkpoint(out).check()  # headers agree with the new config
    loaded, li = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not li["missing_keys"] and not li["unexpected_keys"] and not li.get("mismatched_keys")
    pruned = prune_model(model, plan)
    got, in_mem = loaded.state_dict(), pruned.state_dict()
    assert got.keys() == in_mem.keys()
    for k in got:
        assert torch.equal(got[k], in_mem[k]), k
    assert sum(p.numel() for p in loaded.parameters()) == plan.target().total_params
    if same_logits:
        from family_helpers import logits

        assert torch.equal(logits(loaded.eval()), logits(pruned))
    return loaded


# Bad values of the routed-expert flags on a model with 4 experts of width 32, top-2 (the tiny Nemotron-H
# and the tiny Granite 4.0-H): (arguments, the flag the error names, what it says).
BAD_EXPERT_ARGS = [
    (["--experts", 5], "--experts", "larger than the model's 4"),
    (["--experts", 1], "--experts", "below num_experts_per_tok"),
    (["--experts-per-token", 0], "--experts-per-token", ">= 1"),
    (["--experts", 2, "--experts-per-token", 3], "--experts-per-token", "above the 2 experts"),
    (["--moe-ffn-size", 33], "--moe-ffn-size", "larger than the model's 32"),
]


def assert_refused(result, flag: str, match: str, out: Path) -> None:
    """A CLI `result` of bad input: exit 2, one line on stderr naming `flag` and saying `match`, and nothing
    written: no `out`, and its directory (the test's own) still empty."""
    assert result.exit_code == 2, result.output
    assert flag in result.stderr and match in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(out.parent.iterdir()) == []


def score_dir(out: Path, model_dir, text, extra=()) -> Path:
    """Run `minitron score` on `model_dir` (4 samples of 32 tokens) into `out`; return `out`."""
    from typer.testing import CliRunner

    from minitron.cli.main import app

    r = CliRunner().invoke(app, ["score", str(model_dir), "--data", str(text), "--samples", "4", "--seq-len", "32",
                                 "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return out
