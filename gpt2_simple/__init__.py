"""gpt2_simple: fine-tune OpenAI's GPT-2 on your own text and generate from it, in native TensorFlow 2."""
from .hparams import HParams, load_hparams

__all__ = ["HParams", "load_hparams"]
