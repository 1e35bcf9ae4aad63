"""gpt2_simple: fine-tune OpenAI's GPT-2 on your own text and generate from it, in native TensorFlow 2.

Importing the package configures nothing: no eager-mode switch, no device or thread settings.
"""
from .checkpoint import load_model
from .hparams import HParams, load_hparams
from .model import GPT2

__all__ = ["GPT2", "HParams", "load_hparams", "load_model"]
