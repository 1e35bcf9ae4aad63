"""LoRA in `finetune`: its options, the frozen base a run trains over, and what its saves add.

This module owns `finetune`'s `lora_rank`, `lora_alpha`, `lora_targets`, `base_precision` and
`lora_save`: checking them once, loading the starting weights frozen (in 16 bits when asked) with
fresh adapters or, when a LoRA run resumes, its recorded base model with the saved adapters,
refusing to resume a run with other LoRA settings, and the tensors a save adds (the adapters and
their settings beside the optimizer state; with `lora_save='adapters'`, instead of the weights).
The adapter math is `model/lora.py`'s, the adapter files `formats/adapters.py`'s.
"""
import dataclasses
import os
import warnings

import tensorflow as tf

from ..formats import adapters, folders
from ..model.lora import base_dtype, check_settings
from ..model.model import GPT2

LORA_SAVES = ("merged", "adapters")


# ---------------------------------------------------------------------------------------------
# Options


def check_options(opts):
    """Check the LoRA fields of a `TrainOptions`: a one-line ValueError for a bad value."""
    rank = opts.lora_rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"lora_rank={rank!r} must be 0 (full fine-tuning) or a positive integer such as 8")
    base_dtype(opts.base_precision)
    if opts.lora_save not in LORA_SAVES:
        raise ValueError(f"lora_save={opts.lora_save!r} is not supported; use one of {list(LORA_SAVES)}")
    if rank == 0:
        extra = [f"{name}={value!r}" for name, value, default in (
            ("lora_alpha", opts.lora_alpha, None), ("lora_targets", opts.lora_targets, None),
            ("base_precision", opts.base_precision, "float32"), ("lora_save", opts.lora_save, "merged"))
            if value != default]
        if extra:
            raise ValueError(f"{', '.join(extra)} {'apply' if len(extra) > 1 else 'applies'} only to LoRA training, "
                             "but lora_rank=0 (full fine-tuning); "
                             "pass lora_rank=8 (for instance) as well, or leave them out")
        return
    check_settings(rank, opts.lora_alpha, opts.lora_targets, prefix="lora_")


def normalized(opts):
    """`opts` with LoRA's alpha and targets in their normal form (a new `TrainOptions`: it is frozen).

    Also where the options meet the device (a 16-bit base needs its kernels) and the one warning
    about an option without effect under LoRA.
    """
    if not opts.lora_rank:
        return opts
    config = check_settings(opts.lora_rank, opts.lora_alpha, opts.lora_targets, prefix="lora_")
    if opts.only_train_transformer_layers:
        warnings.warn("only_train_transformer_layers=True has no effect with lora_rank > 0: every weight is frozen "
                      "and the adapters sit in the transformer layers", stacklevel=4)
    if opts.base_precision != "float32" and not can_compute(base_dtype(opts.base_precision)):
        raise ValueError(f"base_precision={opts.base_precision!r}: this device has no {opts.base_precision} matmul "
                         "and cast kernels; use base_precision='bfloat16' (or 'float32')")
    return dataclasses.replace(opts, lora_alpha=config.alpha, lora_targets=config.targets)


def can_compute(dtype):
    """True when the default device runs a matmul and a cast in `dtype` (a CPU may lack float16 kernels)."""
    try:
        x = tf.ones([2, 2], dtype)
        tf.cast(tf.matmul(x, x), tf.float32).numpy()
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Where a run's weights come from


def check_resume(opts, run_dir, prefix, resuming):
    """The saved (settings, adapters) of a resumed LoRA run, or None; a ValueError when the settings differ.

    Called before any weights are loaded or files written.
    """
    if not resuming:
        return None
    found = adapters.read_adapters(prefix)
    saved = found[0] if found else {"rank": 0}
    if saved["rank"] == 0 and opts.lora_rank == 0:
        return None
    wanted = {"rank": opts.lora_rank, "alpha": opts.lora_alpha, "targets": list(opts.lora_targets or ())}
    if saved["rank"] and all(saved[k] == wanted[k] for k in wanted):
        return found
    if saved["rank"] == 0:
        raise ValueError(f"lora_rank={opts.lora_rank}: run {run_dir} was fully fine-tuned (no adapters in {prefix}); "
                         "resume it with lora_rank=0, or put adapters on its weights in a new run with "
                         f"restore_from={run_dir!r} and another run_name")
    was = f"lora_rank={saved['rank']}, lora_alpha={saved['alpha']}, lora_targets={saved['targets']}"
    now = f"lora_rank={wanted['rank']}, lora_alpha={wanted['alpha']}, lora_targets={wanted['targets']}"
    raise ValueError(f"{now} differs from the {was} that run {run_dir} was trained with; pass those to resume it, "
                     "or restore_from='fresh' to start over")


def model_to_train(opts, run_dir, source_dir, prefix, saved):
    """The `GPT2` a run trains: today's model, or a frozen base with adapters (fresh, or `saved` ones)."""
    checkpoint = os.path.basename(prefix)
    if not opts.lora_rank:
        model = folders.load_model(source_dir, checkpoint)
        return model if model.lora is None else _trainable_copy(model)
    if saved is not None:
        settings, arrays = saved
        base = (adapters.base_folder(settings, run_dir), settings["base_checkpoint"])
        model = folders.load_base(*base, base_precision=opts.base_precision)
        adapters.apply_adapters(model, settings, arrays, source=prefix)
        model.lora_base = (settings["base_folder"], settings["base_checkpoint"])
    else:
        model = folders.load_base(source_dir, checkpoint, base_precision=opts.base_precision)
        if opts.lora_rank > model.hparams.n_embd:
            raise ValueError(f"lora_rank={opts.lora_rank} is larger than the model's matrices allow (at most "
                             f"n_embd={model.hparams.n_embd}); pass a smaller rank such as 8")
        model.enable_lora(opts.lora_rank, alpha=opts.lora_alpha, targets=opts.lora_targets, seed=opts.seed)
        model.lora_base = (source_dir, checkpoint)
    model.checkpoint_path = prefix
    return model


def _trainable_copy(model):
    """A plain float32 model of `model`'s merged weights (full fine-tuning from an adapters-only save)."""
    model.merge_lora()
    merged = {name: var.numpy() for name, var in model.weights.items()}
    copy = GPT2(model.hparams, init=lambda name, shape: merged[name].astype("float32").reshape(shape))
    copy.checkpoint_path = model.checkpoint_path
    return copy


def trainable_weights(model, names):
    """`{name: variable}` that the optimizer updates: the adapters of a LoRA model, else `names`' weights."""
    if model.lora is not None:
        return dict(model.lora_weights)
    return {n: model.weights[n] for n in names}


# ---------------------------------------------------------------------------------------------
# What a save adds


def save_tensors(model, opts):
    """(tensors for `optimizer-<N>`, tensors for `model-<N>` or None for the merged weights)."""
    if model.lora is None:
        return {}, None
    settings = adapters.settings_of(model, opts.base_precision, *model.lora_base)
    tensors = adapters.adapter_tensors(model, settings)
    return tensors, (tensors if opts.lora_save == "adapters" else None)
