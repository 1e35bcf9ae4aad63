"""A new GPT-2 with random weights: the model folder that training from scratch starts from.

This module owns `create_model`: choosing the shape (a named preset, an `HParams` or a dict,
with `n_vocab` taken from the vocabulary), drawing OpenAI's initial weights and writing a
complete folder in the OpenAI layout (`hparams.json`, `encoder.json`, `vocab.bpe`, `model-0`),
which `finetune(model_name=...)` then trains like any downloaded model. Learning a vocabulary is
`encoder/learn.py`'s, the initialisation `model.py`'s, the files `checkpoint.py`'s.

    encoder.learn_bpe("corpus.txt", 8000, "models/mymodel")    # encoder.json, vocab.bpe
    gpt2_simple.create_model("models", "mymodel", "small")    # hparams.json, model-0
    gpt2_simple.finetune(sess, "corpus.txt", model_name="mymodel", learning_rate=1e-3)
"""
import dataclasses
import os

from encoder.vocab import ENCODER_FILE, MERGES_FILE, read_vocab

from ..atomic import copy_file
from ..formats.checkpoint import save_checkpoint
from ..model.hparams import PRESETS, HParams, save_hparams
from ..model.model import GPT2, normal_init
from ..model.names import model_folder

VOCAB_FILES = (ENCODER_FILE, MERGES_FILE)


def create_model(model_dir, model_name, preset="small", *, vocab_dir=None, seed=None):
    """Write a randomly initialised GPT-2 into `model_dir/model_name` for training from scratch.

    Args:
        model_dir, model_name: the new model folder, as `finetune` takes them.
        preset: the shape: a name from `hparams.PRESETS` ('tiny': 2 layers of width 32,
            context 64; 'small': 4 layers of width 256, context 256, 3.2M weights in the
            blocks; or a released size such as '124M'), an `HParams`, or a dict with the keys
            n_ctx, n_embd, n_head and n_layer. n_vocab always comes from the vocabulary (any
            n_vocab given here is replaced by it).
        vocab_dir: the folder whose `encoder.json` and `vocab.bpe` to copy (learned with
            `encoder.learn_bpe`, or a released model's to keep GPT-2's vocabulary). None: the
            two files are already in the new folder (`learn_bpe(..., out_dir=that folder)`).
        seed: seed of the initial weights (OpenAI's scheme: N(0, 0.02), wpe N(0, 0.01),
            LayerNorm gains 1, biases 0); None draws a fresh one.

    Returns:
        The `HParams` written to the folder's `hparams.json`.

    Raises:
        FileNotFoundError: no vocabulary files where they should be.
        FileExistsError: the folder already holds other files (nothing is overwritten).
        ValueError: an unknown preset or inconsistent shape, or malformed vocabulary files.
    """
    folder = model_folder(model_dir, model_name)
    source = folder if vocab_dir is None else vocab_dir
    same = os.path.realpath(source) == os.path.realpath(folder)
    _check_empty(folder, allowed=VOCAB_FILES if same else ())
    if not all(os.path.isfile(os.path.join(source, n)) for n in VOCAB_FILES):
        raise FileNotFoundError(
            f"{source} lacks encoder.json or vocab.bpe; learn a vocabulary with encoder.learn_bpe(texts, 8000, "
            f"{folder!r}) first, or pass vocab_dir= a folder that has one (e.g. 'models/124M' for GPT-2's)")
    encoder, _ = read_vocab(source)
    hparams = resolve_preset(preset, len(encoder))
    os.makedirs(folder, exist_ok=True)
    if not same:
        for name in VOCAB_FILES:
            copy_file(os.path.join(source, name), os.path.join(folder, name))
    save_checkpoint(GPT2(hparams, init=normal_init(seed)), folder, 0)
    save_hparams(hparams, folder)  # last: a folder with hparams.json is complete
    return hparams


def resolve_preset(preset, n_vocab):
    """The `HParams` of `preset` (a PRESETS name, an HParams or a dict) with `n_vocab` tokens."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {sorted(PRESETS)}; pass one of them, an HParams or "
                             "a dict with n_ctx, n_embd, n_head and n_layer")
        return dataclasses.replace(PRESETS[preset], n_vocab=n_vocab)
    if isinstance(preset, HParams):
        return dataclasses.replace(preset, n_vocab=n_vocab)
    if isinstance(preset, dict):
        return HParams.from_dict(dict(preset, n_vocab=n_vocab), source="preset")
    raise ValueError(f"preset={preset!r} must be a preset name such as 'small', an HParams or a dict")


def _check_empty(folder, allowed=()):
    """Refuse a folder that holds anything but the `allowed` files."""
    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise FileExistsError(f"{folder} exists and is not a folder; pick another model_name")
    others = sorted(set(os.listdir(folder)) - set(allowed))
    if others:
        raise FileExistsError(f"{folder} already holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}; "
                              "create_model never overwrites: pick another model_name or empty the folder")

