"""Which layout a model folder is in, loading any of them, and converting between them.

This module owns telling the two folder layouts apart: OpenAI's (`hparams.json`, a `checkpoint`
state file and TF bundles: model folders and run folders) and Hugging Face's (`config.json` and
`model.safetensors`). `load_model` reads either; `export_hf` writes the second from either. What
each layout holds is `checkpoint.py`'s and `hf.py`'s; neither of those imports the other's
loader, so format detection lives only here.
"""
import os

from encoder.vocab import vocab_files

from ..atomic import staged_folder
from . import hf
from .checkpoint import find_checkpoint, load_checkpoint


def weights_file(folder, name="latest"):
    """The path that holds a folder's weights: a checkpoint prefix, or an HF folder's safetensors file."""
    return hf.weights_path(folder) if hf.is_hf_folder(folder) else find_checkpoint(folder, name)


def load_model(folder, checkpoint="latest"):
    """Load GPT-2 from a model folder (`models/124M`) or a run folder (`checkpoint/run1`).

    Args:
        folder: a folder with `hparams.json`, a `checkpoint` state file and the bundle it names,
            or one in Hugging Face's layout (`config.json` and `model.safetensors`; see `hf.py`).
        checkpoint: 'latest', or the name of one checkpoint in the folder (e.g. 'model-1000').

    Returns:
        A `GPT2` whose `.hparams` are the folder's; `model(tokens)` gives logits.

    Raises:
        FileNotFoundError: missing folder, hparams.json or checkpoint files.
        ValueError: malformed hparams.json, or a checkpoint that disagrees with it or is corrupt.
    """
    if hf.is_hf_folder(folder):
        return hf.load_hf_model(folder, checkpoint)
    return load_checkpoint(folder, checkpoint)


def export_hf(source, out_dir, *, checkpoint="latest", overwrite=False):
    """Write a run or model folder in Hugging Face's layout, for `GPT2LMHeadModel.from_pretrained(out_dir)`.

    Args:
        source: any folder `load_model` reads: a run folder (`checkpoint/run1`), a model folder
            (`models/124M`) or a Hugging Face one.
        out_dir: the folder to write: `config.json`, `model.safetensors` (float32, without the
            tied `lm_head.weight`), `vocab.json` and `merges.txt` (copies of `encoder.json` and
            `vocab.bpe`). It is written beside, under a temporary name, then renamed.
        checkpoint: 'latest', or the name of one checkpoint in `source` (e.g. 'model-1000').
        overwrite: replace `out_dir` when it already holds files.

    Returns:
        `out_dir`.

    Raises:
        FileExistsError: `out_dir` is a file, or holds files and `overwrite` is False.
        FileNotFoundError: `source` lacks its weights or vocabulary.
        ValueError: `out_dir` is or contains `source`, or `source` is malformed.
    """
    _check_out_dir(source, out_dir, overwrite)
    model = load_model(source, checkpoint)
    vocab = vocab_files(source)
    for path in vocab:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found; export_hf copies the vocabulary of {source}, so the "
                                    "folder needs encoder.json and vocab.bpe")
    with staged_folder(out_dir) as tmp:
        hf.write_hf_folder(model, vocab, tmp)
    return out_dir


def _check_out_dir(source, out_dir, overwrite):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"out_dir={out_dir!r} is a file; pass the path of a folder to create")
    src, out = os.path.realpath(source), os.path.realpath(out_dir)
    if src == out or src.startswith(out.rstrip(os.sep) + os.sep):
        raise ValueError(f"out_dir={out_dir!r} is or contains source={source!r}; export to a new folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"out_dir={out_dir!r} already holds files; pass overwrite=True to replace it, "
                              "or pick a new folder")
