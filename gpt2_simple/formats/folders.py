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
from . import adapters, hf, hub, model_card, peft
from .checkpoint import find_checkpoint, load_checkpoint


def weights_file(folder, name="latest"):
    """The path that holds a folder's weights: a checkpoint prefix, or an HF folder's safetensors file."""
    return hf.weights_path(folder) if hf.is_hf_folder(folder) else find_checkpoint(folder, name)


def load_model(folder, checkpoint="latest", *, base_precision=None, peft_adapters=None):
    """Load GPT-2 from a model folder (`models/124M`) or a run folder (`checkpoint/run1`).

    Args:
        folder: a folder with `hparams.json`, a `checkpoint` state file and the bundle it names,
            or one in Hugging Face's layout (`config.json` and `model.safetensors`; see `hf.py`),
            or a Hub id `hf://ORG/NAME` (pulled through huggingface_hub's cache: `hub.py`).
        checkpoint: 'latest', or the name of one checkpoint in the folder (e.g. 'model-1000').
            A checkpoint saved with `lora_save='adapters'` loads its base model (the folder it
            records) with the adapters on top.
        base_precision: None, or 'float32'/'bfloat16'/'float16': the weights are created frozen
            in that dtype, a base for LoRA.
        peft_adapters: a Hugging Face peft LoRA folder (`adapter_config.json`,
            `adapter_model.safetensors`) to put on top of the weights, applied on the fly.

    Returns:
        A `GPT2` whose `.hparams` are the folder's; `model(tokens)` gives logits.

    Raises:
        FileNotFoundError: missing folder, hparams.json or checkpoint files.
        ValueError: malformed hparams.json, or a checkpoint that disagrees with it or is corrupt.
    """
    folder = hub.resolve(folder)
    if hf.is_hf_folder(folder):
        model = hf.load_hf_model(folder, checkpoint, base_precision=base_precision)
    elif adapters.is_adapter_bundle(prefix := find_checkpoint(folder, checkpoint)):
        model = adapters.load_adapter_run(folder, prefix, load_base, base_precision=base_precision)
    else:
        model = load_checkpoint(folder, checkpoint, base_precision=base_precision)
    return model if peft_adapters is None else peft.load_peft_folder(model, peft_adapters)


def load_base(folder, checkpoint="latest", *, base_precision=None):
    """The weights a LoRA run starts from: `load_model`, with any adapters it carries folded in."""
    return load_model(folder, checkpoint, base_precision=base_precision).merge_lora()


def export_hf(source, out_dir, *, checkpoint="latest", overwrite=False, peft_adapters=False):
    """Write a run or model folder in Hugging Face's layout, for `GPT2LMHeadModel.from_pretrained(out_dir)`.

    Args:
        source: any folder `load_model` reads: a run folder (`checkpoint/run1`), a model folder
            (`models/124M`) or a Hugging Face one.
        out_dir: the folder to write, a complete model repository: `config.json`,
            `model.safetensors` (float32, without the tied `lm_head.weight`), `vocab.json` and
            `merges.txt` (copies of `encoder.json` and `vocab.bpe`), `tokenizer_config.json`,
            `generation_config.json` and a model card, `README.md` (`model_card.py`). It is
            written beside, under a temporary name, then renamed.
        checkpoint: 'latest', or the name of one checkpoint in `source` (e.g. 'model-1000').
        overwrite: replace `out_dir` when it already holds files.
        peft_adapters: for a LoRA run, write its adapters alone in peft's format instead
            (`adapter_config.json`, `adapter_model.safetensors`), for
            `PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), out_dir)` where
            `base` is the run's base model exported with `export_hf`.

    Returns:
        `out_dir`.

    Raises:
        FileExistsError: `out_dir` is a file, or holds files and `overwrite` is False.
        FileNotFoundError: `source` lacks its weights or vocabulary.
        ValueError: `out_dir` is or contains `source`, or `source` is malformed.
    """
    _check_out_dir(source, out_dir, overwrite)
    if peft_adapters:
        return _export_peft(source, out_dir, checkpoint)
    model = load_model(source, checkpoint)
    vocab = vocab_files(source)
    for path in vocab:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found; export_hf copies the vocabulary of {source}, so the "
                                    "folder needs encoder.json and vocab.bpe")
    with staged_folder(out_dir) as tmp:
        hf.write_hf_folder(model, vocab, tmp)
        model_card.write_repository_files(tmp, source, model.hparams)
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


def _export_peft(source, out_dir, checkpoint):
    """`export_hf(peft_adapters=True)`: the adapters of a LoRA run checkpoint, in peft's format."""
    prefix = find_checkpoint(source, checkpoint)
    found = adapters.read_adapters(prefix)
    if found is None:
        raise ValueError(f"source={source!r} checkpoint {prefix} has no LoRA adapters (not a LoRA run, or its "
                         "optimizer-<N> file was deleted); export the merged model with peft_adapters=False")
    settings, arrays = found
    model = load_base(adapters.base_folder(settings, source), settings["base_checkpoint"])
    adapters.apply_adapters(model, settings, arrays, source=prefix)
    with staged_folder(out_dir) as tmp:
        peft.write_peft_folder(model, tmp, base_model_name_or_path=settings["base_folder"])
        model_card.write_repository_files(tmp, source, model.hparams, adapter=True)
    return out_dir
