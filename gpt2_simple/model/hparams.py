"""GPT-2 hyper-parameters: the five `hparams.json` keys as a frozen dataclass.

This module owns the shape of a GPT-2 model: reading and writing `hparams.json`, checking the
values, the named sizes (the four OpenAI releases and tiny presets for tests), and whether token
ids fit a model of that shape (`check_tokens`). It does not know about weights or files other
than `hparams.json`.
"""
import dataclasses
import json
import os

import numpy as np

from ..atomic import write_text

HPARAMS_FILE = "hparams.json"


@dataclasses.dataclass(frozen=True)
class HParams:
    """The architecture of one GPT-2 model; field names are the `hparams.json` keys."""

    n_vocab: int = 50257  # tokens in the vocabulary (rows of wte)
    n_ctx: int = 1024  # longest sequence the model sees (rows of wpe)
    n_embd: int = 768  # width of the residual stream
    n_head: int = 12  # attention heads; must divide n_embd
    n_layer: int = 12  # transformer blocks

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"hparams {field.name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"hparams n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "pick n_head so that each head gets n_embd // n_head channels"
            )

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def n_params(self):
        """Number of weights, counting the tied embedding once."""
        e = self.n_embd
        per_block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
        return self.n_vocab * e + self.n_ctx * e + self.n_layer * per_block + 2 * e

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="hparams"):
        """Build from a mapping with exactly the five keys; `source` names it in errors."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} must hold a JSON object with the keys {sorted(_KEYS)}")
        missing = sorted(_KEYS - values.keys())
        unknown = sorted(values.keys() - _KEYS)
        if missing or unknown:
            raise ValueError(
                f"{source} has missing keys {missing} and unknown keys {unknown}; "
                f"GPT-2 hparams are exactly {sorted(_KEYS)}"
            )
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


_KEYS = {f.name for f in dataclasses.fields(HParams)}

# The four OpenAI releases (117M and 345M are the old names of 124M and 355M), and tiny presets
# for tests and for training from scratch on a laptop.
PRESETS = {
    "124M": HParams(n_embd=768, n_head=12, n_layer=12),
    "355M": HParams(n_embd=1024, n_head=16, n_layer=24),
    "774M": HParams(n_embd=1280, n_head=20, n_layer=36),
    "1558M": HParams(n_embd=1600, n_head=25, n_layer=48),
    "tiny": HParams(n_vocab=50257, n_ctx=64, n_embd=32, n_head=2, n_layer=2),
    # Laptop-sized, for create_model: 3.2M weights in the blocks plus 256 per token of the
    # vocabulary (5.3M in all with an 8000-token vocabulary, 16.1M with GPT-2's).
    "small": HParams(n_vocab=50257, n_ctx=256, n_embd=256, n_head=4, n_layer=4),
}
PRESETS["117M"] = PRESETS["124M"]
PRESETS["345M"] = PRESETS["355M"]


def load_hparams(folder):
    """Read `folder/hparams.json`.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it is not valid JSON or does not hold the five positive integer keys.
    """
    path = os.path.join(folder, HPARAMS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found; a model folder needs hparams.json "
            "(download one with download_gpt2(model_name='124M'))"
        )
    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); restore it from the model download") from None
    return HParams.from_dict(values, source=path)


def save_hparams(hparams, folder):
    """Write `folder/hparams.json` atomically (temporary name, fsync, then rename)."""
    path = os.path.join(folder, HPARAMS_FILE)
    write_text(path, json.dumps(hparams.to_dict()))
    return path


def check_tokens(tokens, hparams, name="tokens"):
    """Raise a one-line ValueError unless `tokens` is int `[batch, seq]` within the model's range."""
    array = np.asarray(tokens)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be int [batch, seq] with seq >= 1, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    if array.shape[1] > hparams.n_ctx:
        raise ValueError(
            f"{name} has {array.shape[1]} positions but the model's context is n_ctx={hparams.n_ctx}; "
            "pass at most n_ctx tokens per sequence"
        )
    if array.size and (array.min() < 0 or array.max() >= hparams.n_vocab):
        raise ValueError(
            f"{name} holds ids in [{array.min()}, {array.max()}] but the vocabulary has "
            f"n_vocab={hparams.n_vocab} ids; encode text with the model's own encoder"
        )
