"""What a run folder carries between `finetune` calls: where training starts, and exact resumes.

This module owns choosing the weights a run starts from (`restore_from`: the run's latest
checkpoint, the base model, or a folder or checkpoint given by path, OpenAI or Hugging Face
layout), copying the model's metadata into the run folder, and saving and restoring everything
a resume needs: `model-<N>` (the weights), `optimizer-<N>` (the optimizer state plus a JSON
training state: data sampler, running average, seed, loss scale) and `counter`. The training
loop is `train.py`'s; the file formats are `checkpoint.py`'s.
"""
import glob
import json
import os
import warnings

import tensorflow as tf

from encoder.vocab import vocab_files

from ..atomic import copy_file, size_text, write_text
from ..formats import checkpoint, folders, hf
from ..formats.download import MODEL_ALIASES, MODEL_NAMES
from ..formats.hub import model_folder
from ..formats.tensor_reads import read_tensor
from ..model.hparams import save_hparams
from . import lora_run

COUNTER_FILE = "counter"
METADATA_FILES = ("hparams.json", "encoder.json", "vocab.bpe")
STATE_TENSOR = "training_state"

# ---------------------------------------------------------------------------------------------
# Where the weights come from


def weights_source(opts, run_dir):
    """(folder, checkpoint prefix, resuming) for `restore_from`.

    A folder in Hugging Face's layout gives its `model.safetensors` as the prefix (never resuming).
    """
    def weights_in(folder):
        return folders.weights_file(folder)

    if opts.restore_from == "latest":
        if checkpoint.read_state(run_dir):
            return run_dir, checkpoint.find_checkpoint(run_dir), True
        print(f"No checkpoint in {run_dir} yet: starting from the base model "
              f"{model_folder(opts.model_dir, opts.model_name)}")
    if opts.restore_from in ("latest", "fresh"):
        folder = model_folder(opts.model_dir, opts.model_name)
        if not os.path.isdir(folder) and opts.model_name not in MODEL_NAMES + tuple(MODEL_ALIASES):
            raise FileNotFoundError(
                f"base model folder {folder} does not exist and model_name={opts.model_name!r} is not a "
                f"released GPT-2 model; use one of {', '.join(map(repr, MODEL_NAMES))}, or the model_dir "
                "and model_name of your own model folder"
            )
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"base model folder {folder} does not exist; download it with "
                f"gpt2.download_gpt2(model_name={opts.model_name!r}) or pass model_dir= where it is"
            )
        return folder, weights_in(folder), False
    path = opts.restore_from
    if os.path.isfile(path + checkpoint.INDEX_SUFFIX):  # a checkpoint prefix such as checkpoint/run1/model-100
        return os.path.dirname(path) or ".", path, False
    if os.path.basename(path) == hf.WEIGHTS_FILE and hf.is_hf_folder(os.path.dirname(path) or "."):
        return os.path.dirname(path) or ".", path, False  # a Hugging Face weights file: hf_model/model.safetensors
    if os.path.isdir(path):
        return path, weights_in(path), False
    raise FileNotFoundError(
        f"restore_from={path!r} is neither 'latest', 'fresh', a run folder nor a checkpoint prefix; "
        "pass a folder such as 'checkpoint/run1'"
    )


def copy_metadata(source_dir, run_dir):
    """hparams.json, encoder.json and vocab.bpe into the run folder, which stays in OpenAI's layout.

    From a folder in Hugging Face's layout, hparams.json is written from its config.json and the
    vocabulary is copied from vocab.json and merges.txt (the same bytes).
    """
    if os.path.realpath(source_dir) == os.path.realpath(run_dir):
        return
    sources = {name: os.path.join(source_dir, name) for name in METADATA_FILES}
    sources["encoder.json"], sources["vocab.bpe"] = vocab_files(source_dir)  # or vocab.json, merges.txt
    if hf.is_hf_folder(source_dir):
        save_hparams(hf.load_config(source_dir), run_dir)
        del sources["hparams.json"]
    for name, src in sources.items():
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src} not found; the model folder {source_dir} is incomplete "
                                    "(download it again with download_gpt2)")
        copy_file(src, os.path.join(run_dir, name))


def step_of_run(prefix):
    step = checkpoint.step_of(prefix)
    if step >= 0:
        return step
    counter_file = os.path.join(os.path.dirname(prefix), COUNTER_FILE)
    with open(counter_file, encoding="utf-8") as f:
        return int(f.read().strip())


# ---------------------------------------------------------------------------------------------
# Saving and resuming


def save(model, opt, run_dir, step, data, avg, seed, opts, printed_name, loss_scale=None, *, extra=None):
    print("Saving", printed_name)
    state = {"step": step, "seed": seed, "avg_loss": list(avg), "data_sampler": data.get_state(),
             "save_optimizer": opts.save_optimizer, **(extra or {})}
    if loss_scale is not None:
        state["loss_scale"] = loss_scale.get_state()
    companion = optimizer_tensors(opt, opts.save_optimizer)
    companion[STATE_TENSOR] = tf.constant(json.dumps(state))
    adapters, model_bundle = lora_run.save_tensors(model, opts)  # LoRA: the adapters; ({}, None) otherwise
    companion.update(adapters)
    prefix = checkpoint.save_checkpoint(model, run_dir, step, max_checkpoints=opts.max_checkpoints,
                                        companions={"optimizer": companion}, tensors=model_bundle)
    write_text(os.path.join(run_dir, COUNTER_FILE), f"{step}\n")
    print(describe_save(prefix, opts.save_optimizer))


def optimizer_tensors(opt, mode):
    """What a save keeps of the optimizer: all of it, its float moments in bfloat16, or nothing."""
    if mode == "none":
        return {}
    tensors = dict(opt.state())
    if mode == "bfloat16":
        tensors = {name: tf.cast(t, tf.bfloat16) if t.dtype == tf.float32 and t.shape.rank else t
                   for name, t in tensors.items()}
    return tensors


def describe_save(prefix, mode):
    """'  model-10: 498.0 MB of weights + 995.1 MB of optimizer state; the run folder holds 1.5 GB'."""
    def size(p):
        return sum(os.path.getsize(f) for f in [p + checkpoint.INDEX_SUFFIX] + checkpoint.data_files(p)
                   if os.path.isfile(f))

    folder = os.path.dirname(prefix) or "."
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                if os.path.isfile(os.path.join(folder, f)))
    kept = {"full": "optimizer state", "bfloat16": "bfloat16 optimizer state",
            "none": "training state (save_optimizer='none')"}[mode]
    return (f"  {os.path.basename(prefix)}: {size_text(size(prefix))} of weights + "
            f"{size_text(size(checkpoint.companion_path(prefix, 'optimizer')))} of {kept}; "
            f"the run folder holds {size_text(total)}")


def load_training_state(prefix, opt):
    """Restore the optimizer from `optimizer-<N>` beside `prefix`; returns the training state or None."""
    path = checkpoint.companion_path(prefix, "optimizer")
    if not os.path.isfile(path + checkpoint.INDEX_SUFFIX):
        print(f"No optimizer state beside {prefix} (a gpt-2-simple run?): the optimizer starts fresh")
        return None
    reader = tf.train.load_checkpoint(path)
    try:
        state = json.loads(read_tensor(reader, path, STATE_TENSOR).decode("utf-8"))
        if state.get("save_optimizer", "full") == "none":
            print(f"{prefix} was saved with save_optimizer='none': the optimizer's moments start fresh "
                  "(the data order and step counter continue)")
        else:
            opt.load_state(lambda name: read_tensor(reader, path, name))
    except (tf.errors.NotFoundError, KeyError, ValueError) as e:
        warnings.warn(f"optimizer state {path} does not fit this run ({e}); the optimizer starts fresh")
        return None
    return state


def remove_older_files(run_dir):
    """`overwrite=True`: keep only the latest checkpoint; delete older ones and old event files."""
    *older, latest = checkpoint.read_state(run_dir)
    checkpoint.write_state(run_dir, [latest])
    for prefix in older:
        checkpoint.remove_bundle(prefix, companions=["optimizer"])
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        os.remove(path)
