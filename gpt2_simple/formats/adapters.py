"""LoRA adapters in run folders: the adapter bundle, its settings, and loading it onto its base.

This module owns the files of a LoRA run beyond OpenAI's: the adapter tensors
(`model/h0/attn/c_attn/lora_A` `[nx, r]`, `.../lora_B` `[r, nf]`) and a `lora_settings` string
tensor (JSON: rank, alpha, targets, base_precision and the base model's folder and checkpoint)
written into a run's exact-resume bundle `optimizer-<N>` and, with `lora_save='adapters'`, as
the whole of `model-<N>` (megabytes instead of the model's size). `load_adapter_run` reads such
a `model-<N>` onto its base model. The adapter math is `model/lora.py`'s; when a save happens,
and what else it holds, is `training/`'s.
"""
import json
import os

import numpy as np
import tensorflow as tf

from ..model.lora import check_settings
from . import hub
from .checkpoint import companion_path
from .tensor_reads import read_tensor

SETTINGS_TENSOR = "lora_settings"
RESUME_COMPANION = "optimizer"  # the exact-resume bundle beside model-<N>


def settings_of(model, base_precision, base_folder, base_checkpoint):
    """The JSON-able settings of `model`'s adapters and of the base they sit on."""
    return dict(model.lora.to_dict(), base_precision=base_precision, base_folder=base_folder,
                base_folder_absolute=os.path.abspath(base_folder), base_checkpoint=base_checkpoint)


def adapter_tensors(model, settings):
    """`{name: tensor}`: the adapters and the `lora_settings` JSON, for a bundle."""
    tensors = dict(model.lora_weights)
    tensors[SETTINGS_TENSOR] = tf.constant(json.dumps(settings, sort_keys=True))
    return tensors


# ---------------------------------------------------------------------------------------------
# Reading


def _reader(prefix):
    if not os.path.isfile(prefix + ".index"):
        return None
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError):
        return None


def is_adapter_bundle(prefix):
    """True when the bundle at `prefix` holds adapters only (a `lora_save='adapters'` save)."""
    reader = _reader(prefix)
    return reader is not None and reader.has_tensor(SETTINGS_TENSOR) and not reader.has_tensor("model/wte")


def read_adapters(prefix):
    """(settings dict, {name: array}) of checkpoint `prefix`, from `model-<N>` or `optimizer-<N>`; None if neither has them."""
    for path in (prefix, companion_path(prefix, RESUME_COMPANION)):
        reader = _reader(path)
        if reader is None or not reader.has_tensor(SETTINGS_TENSOR):
            continue
        settings = json.loads(read_tensor(reader, path, SETTINGS_TENSOR).decode("utf-8"))
        names = [n for n in reader.get_variable_to_shape_map() if n.endswith(("/lora_A", "/lora_B"))]
        return settings, {n: read_tensor(reader, path, n) for n in names}
    return None


def base_folder(settings, run_folder):
    """The base model folder recorded in `settings`, as given or absolute; a FileNotFoundError if neither exists."""
    for folder in (settings["base_folder"], settings.get("base_folder_absolute", "")):
        if folder and os.path.isdir(folder):
            return folder
    again = hub.pull_again(settings["base_folder"])  # pulled from the Hub elsewhere: the same commit, here
    if again:
        return again
    raise FileNotFoundError(
        f"{run_folder} holds LoRA adapters whose base model folder {settings['base_folder']} is missing; "
        f"put that model back there (download_gpt2 for a released model) or train with lora_save='merged'"
    )


def apply_adapters(model, settings, arrays, *, source, seed=None):
    """Enable the adapters of `settings` on `model` and set them to `arrays`; returns `model`.

    Raises:
        ValueError: an adapter missing, or shaped for another model (a base with other sizes).
    """
    config = check_settings(settings["rank"], settings["alpha"], settings["targets"])
    model.enable_lora(config.rank, alpha=config.alpha, targets=config.targets, seed=seed)
    for name, var in model.lora_weights.items():
        if name not in arrays:
            raise ValueError(f"{source} has no adapter {name}; it was not written for this model")
        if tuple(arrays[name].shape) != tuple(var.shape):
            raise ValueError(f"{source}: adapter {name} has shape {list(arrays[name].shape)} but the base model "
                             f"implies {list(var.shape)}; the base model has other sizes than the one trained")
        var.assign(np.asarray(arrays[name], np.float32))
    return model


def load_adapter_run(folder, prefix, load_base, *, base_precision=None):
    """The model of an adapters-only save: its base (`load_base(folder, checkpoint, base_precision=)`) plus the adapters.

    The adapters stay separate (applied on the fly); `merge_lora()` folds them in.
    """
    settings, arrays = read_adapters(prefix)
    base = base_folder(settings, folder)
    model = load_base(base, settings["base_checkpoint"], base_precision=base_precision)
    model = apply_adapters(model, settings, arrays, source=prefix)
    model.checkpoint_path = prefix
    return model
