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
