"""minitron: prune and distill hybrid Mamba-Transformer (Nemotron-H) language models."""

__version__ = "0.1.0"
