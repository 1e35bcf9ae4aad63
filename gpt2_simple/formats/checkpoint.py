"""Checkpoints in OpenAI's name-based TensorFlow format: the one table of variable names.

This module owns the files that hold weights: the table of OpenAI variable names and shapes
(`model/wte`, `model/h0/attn/c_attn/w`, ...), reading an original OpenAI checkpoint or a run's
`model-<N>` with a shape check per tensor, writing `model-<N>.index` +
`model-<N>.data-00000-of-00001` (the TF1 `Saver` bundle format, so `tf.train.load_checkpoint`,
TF1 `Saver` code and gpt-2-simple open them; a LoRA run's merged save has a data file a layer) and
the `checkpoint` state file, and `load_checkpoint(folder)`. It knows no optimizers, datasets,
sampling or other layouts (telling a folder's layout apart is `folders.py`'s).

Files are written under temporary names and renamed, and the state file changes only after the
new checkpoint is complete, so a crash never leaves a half-written checkpoint in use.
"""
import glob
import os
import re
import secrets

import numpy as np
import tensorflow as tf

from ..atomic import staged_path, write_text
from ..errors import one_line
from ..model.hparams import load_hparams
from ..model.lora import adapters, base_dtype, frozen_dtype, frozen_variable, merged_weight
from ..model.model import GPT2
from .tensor_reads import DATA_SUFFIX, restore_cast, restore_tensor

STATE_FILE = "checkpoint"
INDEX_SUFFIX = ".index"


def openai_variables(hparams):
    """The OpenAI checkpoint table: `[(name, shape)]` in checkpoint order (148 entries for 124M).

    Shapes are as stored in the checkpoint: `conv1d` weights are `[1, nx, nf]`.
    """
    e = hparams.n_embd
    table = [("model/wte", (hparams.n_vocab, e)), ("model/wpe", (hparams.n_ctx, e))]
    for i in range(hparams.n_layer):
        h = f"model/h{i}"
        table += [
            (f"{h}/ln_1/g", (e,)),
            (f"{h}/ln_1/b", (e,)),
            (f"{h}/attn/c_attn/w", (1, e, 3 * e)),
            (f"{h}/attn/c_attn/b", (3 * e,)),
            (f"{h}/attn/c_proj/w", (1, e, e)),
            (f"{h}/attn/c_proj/b", (e,)),
            (f"{h}/ln_2/g", (e,)),
            (f"{h}/ln_2/b", (e,)),
            (f"{h}/mlp/c_fc/w", (1, e, 4 * e)),
            (f"{h}/mlp/c_fc/b", (4 * e,)),
            (f"{h}/mlp/c_proj/w", (1, 4 * e, e)),
            (f"{h}/mlp/c_proj/b", (e,)),
        ]
    return table + [("model/ln_f/g", (e,)), ("model/ln_f/b", (e,))]


# ---------------------------------------------------------------------------------------------
# Finding a checkpoint in a folder


def read_state(folder):
    """Checkpoint prefixes named by `folder/checkpoint`, oldest first (latest last); [] if none."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    latest = re.findall(r'^model_checkpoint_path:\s*"(.*)"\s*$', text, re.M)
    names = re.findall(r'^all_model_checkpoint_paths:\s*"(.*)"\s*$', text, re.M)
    names = [n for n in names if not latest or n != latest[0]] + latest[:1]
    # TF1 Saver writes absolute paths for absolute folders; a moved folder keeps its basenames.
    return [n if os.path.isabs(n) and _bundle_exists(n) else os.path.join(folder, os.path.basename(n))
            for n in names]


def _bundle_exists(prefix):
    return os.path.isfile(prefix + INDEX_SUFFIX)


def find_checkpoint(folder, checkpoint="latest"):
    """The prefix of a checkpoint in `folder`: the latest one, or the one named (e.g. 'model-1000';
    'best' is `model-best`, the lowest validation loss of a `keep_best=True` run).

    Raises:
        FileNotFoundError: the folder, its state file or the named checkpoint does not exist.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"model folder {folder!r} does not exist; download a model with "
            "download_gpt2(model_name='124M') or fine-tune to create a run folder"
        )
    if checkpoint not in (None, "latest"):
        name = "model-best" if checkpoint == "best" else os.path.basename(str(checkpoint))  # keep_best's save
        prefix = os.path.join(folder, name)
        if not _bundle_exists(prefix):
            found = [os.path.basename(p) for p in read_state(folder)]
            raise FileNotFoundError(
                f"checkpoint={checkpoint!r} not found in {folder} ({prefix}{INDEX_SUFFIX} is missing); "
                f"checkpoints there: {found or 'none'}"
            )
        return prefix
    for prefix in reversed(read_state(folder)):
        if _bundle_exists(prefix):
            return prefix
    raise FileNotFoundError(
        f"{folder} holds no checkpoint (no '{STATE_FILE}' file naming an existing .index); "
        "download the model again or fine-tune to create one"
    )


# ---------------------------------------------------------------------------------------------
# Reading


def checked_reader(prefix, hparams):
    """Open the bundle at `prefix` and check every tensor of the table against `hparams`.

    Returns:
        A `tf.train.CheckpointReader`.

    Raises:
        ValueError: a tensor is missing or has the wrong shape (the message names it), or the
            bundle cannot be read.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"cannot read checkpoint {prefix}: {one_line(e, first=True)}") from None
    shapes = reader.get_variable_to_shape_map()
    for name, shape in openai_variables(hparams):
        if name not in shapes:
            raise ValueError(
                f"checkpoint {prefix} has no tensor {name}; it is not a GPT-2 checkpoint "
                f"with n_layer={hparams.n_layer}"
            )
        if tuple(shapes[name]) != shape:
            raise ValueError(
                f"checkpoint {prefix}: tensor {name} has shape {list(shapes[name])} but hparams.json "
                f"implies {list(shape)}; hparams.json does not belong to this checkpoint"
            )
    return reader


def load_checkpoint(folder, checkpoint="latest", *, base_precision=None):
    """Load GPT-2 from a folder in OpenAI's layout: `hparams.json`, a `checkpoint` state file and its bundle.

    Args:
        folder: a model folder (`models/124M`) or a run folder (`checkpoint/run1`).
        checkpoint: 'latest', or the name of one checkpoint in the folder (e.g. 'model-1000').
        base_precision: None, or 'float32'/'bfloat16'/'float16': every weight is created frozen
            (not trainable) in that dtype, a frozen base for LoRA (`model/lora.py`).

    Returns:
        A `GPT2` whose `.hparams` are the folder's, with `.checkpoint_path` its bundle prefix.

    Raises:
        FileNotFoundError: missing folder, hparams.json or checkpoint files.
        ValueError: malformed hparams.json, or a checkpoint that disagrees with it or is corrupt.
    """
    prefix = find_checkpoint(folder, checkpoint)
    hparams = load_hparams(folder)
    reader = checked_reader(prefix, hparams)
    dtypes, stored = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()

    frozen = None if base_precision is None else base_dtype(base_precision)

    def init(name, shape):  # one tensor at a time, straight into its variable; a 16-bit base cast slice by slice
        if frozen is None:
            return restore_tensor(prefix, name, shape, dtypes[name])
        value = restore_cast(prefix, name, stored[name], dtypes[name], frozen_dtype(name, frozen))
        return frozen_variable(name, value.reshape(shape), frozen)

    model = GPT2(hparams, init=init)
    model.checkpoint_path = prefix
    return model


# ---------------------------------------------------------------------------------------------
# Writing


def write_bundle(prefix, tensors):
    """Write `{name: array}` as a TF bundle at `prefix`, atomically.

    The bundle is written under a temporary prefix, then its data file and index are renamed
    (index last: a bundle is only seen as present once its index exists).
    """
    names = list(tensors)
    with staged_path(prefix, suffixes=(DATA_SUFFIX, INDEX_SUFFIX)) as tmp:
        tf.raw_ops.SaveV2(
            prefix=tmp,
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tensors[n] for n in names],
        )
    _fsync_dir(os.path.dirname(prefix))
    return prefix


def remove_temporaries(folder):
    """Delete what an interrupted save left behind (`.tmp-*` bundles, `*.tmp` files); returns them."""
    if not os.path.isdir(folder):
        return []
    stale = [f for f in os.listdir(folder) if f.startswith(".tmp-") or f.endswith(".tmp")]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def model_tensors(model, names=None):
    """The model's weights by OpenAI name (`names` only, when given), reshaped to the checkpoint's shapes:
    float32, LoRA adapters folded in."""
    adapted, table = adapters(model), openai_variables(model.hparams)
    return {n: tf.reshape(merged_weight(model, n, adapted), shape) for n, shape in table if names is None or n in names}


def write_merged_bundle(prefix, model):
    """`model_tensors(model)` as one TF bundle at `prefix`, atomically, a layer at a time: a LoRA model's merged
    weights are new float32 tensors, a second model if formed at once. Each layer's are written as a bundle,
    then merged into one (`MergeV2Checkpoints`: a data file per layer, one index)."""
    table = [name for name, _ in openai_variables(model.hparams)]
    groups = [[n for n in table if not n.startswith("model/h")]]
    groups += [[n for n in table if n.startswith(f"model/h{i}/")] for i in range(model.hparams.n_layer)]
    folder, name = os.path.split(os.path.abspath(prefix))
    stem = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{name}")
    parts = [f"{stem}-part{k}" for k in range(len(groups))]
    try:
        for part, names in zip(parts, groups):
            tensors = model_tensors(model, names)  # this layer's float32 copies, gone before the next layer's
            tf.raw_ops.SaveV2(prefix=part, tensor_names=names, shape_and_slices=[""] * len(names),
                              tensors=[tensors[n] for n in names])
        shards = tuple(f".data-{i:05d}-of-{len(parts):05d}" for i in range(len(parts)))
        with staged_path(prefix, suffixes=shards + (INDEX_SUFFIX,)) as tmp:
            tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=tmp, delete_old_dirs=False)
    finally:
        for path in glob.glob(stem + "-part*"):
            os.remove(path)
    _fsync_dir(folder)
    return prefix


def write_state(folder, prefixes):
    """Rewrite `folder/checkpoint` to list `prefixes` (latest last), with relative names."""
    names = [os.path.basename(p) for p in prefixes]
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    write_text(os.path.join(folder, STATE_FILE), "\n".join(lines) + "\n")


def save_checkpoint(model, folder, step, *, max_checkpoints=1, companions=None, tensors=None):
    """Save `model` as `folder/model-<step>` and make it the latest checkpoint.

    Args:
        model: a `GPT2`.
        folder: the run folder (created if missing).
        step: the step number in the file name.
        max_checkpoints: how many checkpoints to keep; older ones are deleted only after the
            new one is complete and recorded. None or <= 0 keeps all.
        companions: optional `{name: {tensor_name: tensor}}`: further bundles of the same step,
            written as `folder/<name>-<step>` before the model bundle and pruned with it (the
            optimizer state, for instance), so the model file stays the size of the model.
        tensors: what `model-<step>` holds instead of the model's weights (LoRA adapters alone).

    Returns:
        The new checkpoint's prefix.
    """
    os.makedirs(folder, exist_ok=True)
    step = int(step)
    for name, companion in (companions or {}).items():
        write_bundle(os.path.join(folder, f"{name}-{step}"), companion)
    path = os.path.join(folder, f"model-{step}")
    if tensors is None and model.lora is not None:  # merged weights: new float32 tensors, a layer at a time
        prefix = write_merged_bundle(path, model)
    else:
        prefix = write_bundle(path, model_tensors(model) if tensors is None else tensors)
    previous = [p for p in read_state(folder) if _bundle_exists(p) and p != prefix]
    # A checkpoint of a later step belongs to an earlier run in this folder (restore_from='fresh'
    # restarts the count): it is kept and never pruned here.
    protected = [p for p in previous if step_of(p) > step]
    kept = [p for p in previous if step_of(p) <= step] + [prefix]
    dropped = []
    if max_checkpoints and max_checkpoints > 0:
        dropped, kept = kept[:-max_checkpoints], kept[-max_checkpoints:]
    write_state(folder, protected + kept)
    for old in dropped:
        remove_bundle(old, companions=list(companions or ()))
    return prefix


def step_of(prefix):
    """The N of a `model-N` prefix, or -1 for a name without one (OpenAI's `model.ckpt`)."""
    match = re.search(r"-(\d+)$", os.path.basename(prefix))
    return int(match.group(1)) if match else -1


def remove_bundle(prefix, companions=()):
    """Delete checkpoint `prefix` (and `<companion>-<step>` bundles of the same step)."""
    for p in [prefix] + [companion_path(prefix, c) for c in companions]:
        for path in [p + INDEX_SUFFIX, p + ".meta"] + data_files(p):
            if os.path.exists(path):
                os.remove(path)


def data_files(prefix):
    """The data files of bundle `prefix`: `.data-00000-of-00001`, or one a shard (`write_merged_bundle`'s)."""
    return sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????"))


def companion_path(prefix, name):
    """The prefix of the `name` companion bundle of checkpoint `prefix` (`model-7` -> `optimizer-7`)."""
    folder, base = os.path.split(prefix)
    return os.path.join(folder, re.sub(r"^model", name, base))


def _fsync_dir(folder):
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def numpy_weights(model):
    """The model's weights as `{name: np.ndarray}` in checkpoint shapes (for tests and export)."""
    return {name: np.asarray(t) for name, t in model_tensors(model).items()}
