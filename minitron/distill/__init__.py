"""Logit distillation: chunked KD losses (`losses`), LR schedules, the trainer and its checkpoints."""
