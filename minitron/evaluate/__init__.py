"""Evaluation: perplexity and loss, KL to a teacher, lm-eval tasks, throughput, the comparison table."""
