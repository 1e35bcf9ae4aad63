"""The `memory` section of benchmark.py: peak resident memory of fine-tuning, each run in a fresh process.

Rows (`--memory_configs`): adam, adam_recompute, adafactor, adafactor_recompute (every weight
trained, constant weights built in memory), and lora, lora_recompute: LoRA rank 8 on all four
targets with Adam over a bfloat16 frozen base, loaded by `load_checkpoint` from a random-weight
folder in OpenAI's layout (the path a user's base takes). That folder is written once per size,
tensor by tensor, into `--memory_folder` (reused when it is there) or a temporary folder.

A LoRA row reports a profile of where the memory is: after importing TensorFlow, after loading
(and the peak while loading), after compiling and running the first step, and the peak of the
two steps, beside the bytes the weights and adapters hold.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MEMORY_CONFIGS = (("adam", False), ("adam", True), ("adafactor", False), ("adafactor", True), ("lora", False),
                  ("lora", True))


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's peak at fork)."""
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) / 1024  # kB -> MiB


def write_random_folder(folder, hparams, seed=0):
    """A random-weight model folder in OpenAI's layout, written one block at a time.

    Each block's tensors go to a bundle of their own and TensorFlow's MergeV2Checkpoints joins
    them into `model.ckpt` (a data file per block): no more than one block's weights is ever in
    memory, so 1558M's 6.2 GB checkpoint is written by a small process.
    """
    import tensorflow as tf

    from gpt2_simple.formats.checkpoint import openai_variables, write_state
    from gpt2_simple.model.hparams import save_hparams

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = {}
    for name, shape in openai_variables(hparams):
        groups.setdefault(name.split("/")[1] if name.startswith("model/h") else "top", []).append((name, shape))
    parts = []
    for i, (group, table) in enumerate(groups.items()):
        values = [np.ones(s, np.float32) if n.endswith("/g") else
                  (rng.standard_normal(s, np.float32) * 0.02).astype(np.float32) for n, s in table]
        parts.append(os.path.join(folder, f".part{i}"))
        tf.raw_ops.SaveV2(prefix=parts[-1], tensor_names=[n for n, _ in table], shape_and_slices=[""] * len(table),
                          tensors=values)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=os.path.join(folder, "model.ckpt"))
    write_state(folder, [os.path.join(folder, "model.ckpt")])
    save_hparams(hparams, folder)
    return folder


def lora_child(folder, recompute):
    """Load `folder`'s base in bfloat16, add rank-8 adapters, run two Adam steps and save the merged weights
    (finetune's default `lora_save`); returns the profile, the peak RSS after the steps and after the save."""
    import tensorflow as tf

    from gpt2_simple.formats.checkpoint import load_checkpoint, save_checkpoint
    from gpt2_simple.training.optimizer import make_optimizer
    from gpt2_simple.training.step import compile_train_step

    profile = {"imported_rss_mb": rss_mb()}
    start = time.perf_counter()
    model = load_checkpoint(folder, base_precision="bfloat16")
    profile.update(load_s=time.perf_counter() - start, load_peak_rss_mb=peak_rss_mb(), loaded_rss_mb=rss_mb(),
                   base_mb=sum(v.dtype.size * v.shape.num_elements() for v in model.weights.values()) / 2**20)
    model.enable_lora(8, seed=0)
    opt = make_optimizer("adam", model.lora_weights, 1e-4)
    profile["adapters_and_adam_mb"] = 3 * sum(v.shape.num_elements() * 4 for v in model.lora_weights.values()) / 2**20
    step = compile_train_step(model, opt, list(model.lora_weights), strategy=tf.distribute.get_strategy(),
                              recompute=recompute)
    tokens = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, model.hparams.n_ctx)), tf.int32)
    step(tokens).numpy()
    profile.update(first_step_rss_mb=rss_mb(), first_step_peak_rss_mb=peak_rss_mb())
    start = time.perf_counter()
    step(tokens).numpy()
    profile.update(step_s=time.perf_counter() - start, weights_rss_mb=profile["loaded_rss_mb"],
                   steps_peak_rss_mb=peak_rss_mb())
    with tempfile.TemporaryDirectory() as run:  # finetune's default save: the merged weights, model-2
        start = time.perf_counter()
        save_checkpoint(model, run, 2)
        profile.update(save_s=time.perf_counter() - start, save_peak_rss_mb=peak_rss_mb())
    return profile


def memory_child(model_name, optimizer, recompute, folder=None, full_step=None):
    """One fine-tuning process: weights RSS, peak RSS and step time of two steps (prints JSON)."""
    recompute = recompute == "True"
    if optimizer == "lora":
        values = lora_child(folder, recompute)
    else:
        import tensorflow as tf

        from gpt2_simple.model.hparams import PRESETS
        from gpt2_simple.model.model import GPT2

        model = GPT2(PRESETS[model_name], init=lambda name, shape: np.full(shape, 0.01, np.float32))
        values = {"weights_rss_mb": rss_mb()}
        step = full_step(model, optimizer, "float32", recompute)
        tokens = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, model.hparams.n_ctx)), tf.int32)
        step(tokens).numpy()
        start = time.perf_counter()
        step(tokens).numpy()
        values["step_s"] = time.perf_counter() - start
    values["peak_rss_mb"] = peak_rss_mb()
    print("RESULT" + json.dumps(values))


def bench_memory(args, script, check_child):
    """Peak RSS of fine-tuning, per optimizer and recomputation setting, each in a fresh process."""
    from gpt2_simple.model.hparams import PRESETS

    rows = [(o, r) for o, r in MEMORY_CONFIGS
            if not args.memory_configs or f"{o}{'_recompute' if r else ''}" in args.memory_configs]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(args.memory_folder or tmp, args.model)
        if any(o == "lora" for o, _ in rows) and not os.path.isfile(os.path.join(folder, "hparams.json")):
            write_random_folder(folder, PRESETS[args.model])
        for optimizer, recompute in rows:
            proc = subprocess.run([sys.executable, script, "--memory_child", args.model, optimizer, str(recompute),
                                   "--memory_folder", folder], capture_output=True, text=True)
            check_child(proc)
            values = json.loads(proc.stdout.split("RESULT", 1)[1])
            name = f"{optimizer}{'_recompute' if recompute else ''}"
            if optimizer == "lora":
                result.update({f"{name}_{key}": value for key, value in values.items()})
            else:
                result.update({f"{name}_peak_rss_mb": values["peak_rss_mb"], f"{name}_step_s": values["step_s"],
                               "weights_rss_mb": values["weights_rss_mb"]})
    return result
