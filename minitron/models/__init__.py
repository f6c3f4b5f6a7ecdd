"""Architecture facts read from a Hugging Face Nemotron-H config, and checkpoint access."""

from minitron.models.architecture import Architecture
from minitron.models.layer_types import LAYER_CHARS, layer_char, layer_name

__all__ = ["Architecture", "LAYER_CHARS", "layer_char", "layer_name"]
