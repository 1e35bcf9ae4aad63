"""The `memory` section of benchmark.py: peak resident memory of fine-tuning, each run in a fresh process.

Rows (`--memory_configs`): adam, adam_recompute, adafactor, adafactor_recompute (every weight
trained, constant weights built in memory), and lora, lora_recompute: LoRA rank 8 on all four
targets with Adam over a bfloat16 frozen base, loaded by `load_checkpoint` from a random-weight
folder in OpenAI's layout (the path a user's base takes). That folder is written once per size,
tensor by tensor, into `--memory_folder` (reused when it is there) or a temporary folder.

The Adam row (the defaults) reports the parts of its peak (`adam_parts`): the process before the model, the
weights, Adam's moments, and what the compiled minibatch holds at its peak by XLA's buffer assignment, by kind
(the weights it reads, the backward pass's gradients and temporaries, and the forward pass's activations:
attention probabilities, q/k/v, MLP, LayerNorm and residual, logits). With `--peer transformers`, transformers'
fine-tuning of the same shape runs alone in a process of its own, with the same parts (the activations
autograd saves, by a saved-tensors hook) and its peak RSS (`adam_peak_vs_transformers`).

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
    """One fine-tuning process: weights RSS, peak RSS and step time of two steps (prints JSON).

    With `XLA_FLAGS=--xla_dump_to=DIR` set by the parent (the Adam row), also the parts of the peak
    (`parts`): the process before the model, the weights, Adam's moments, and what the compiled
    minibatch holds at its peak by XLA's own buffer assignment (`xla_peak_parts`).
    """
    recompute = recompute == "True"
    if optimizer == "lora":
        values = lora_child(folder, recompute)
    else:
        import tensorflow as tf

        from gpt2_simple.model.hparams import PRESETS
        from gpt2_simple.model.model import GPT2

        imported = rss_mb()
        hparams = PRESETS[model_name]
        model = GPT2(hparams, init=lambda name, shape: np.full(shape, 0.01, np.float32))
        values = {"weights_rss_mb": rss_mb()}
        step = full_step(model, optimizer, "float32", recompute)
        tokens = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, hparams.n_ctx)), tf.int32)
        step(tokens).numpy()
        start = time.perf_counter()
        step(tokens).numpy()
        values["step_s"] = time.perf_counter() - start
        dump = _dump_dir()
        if dump:
            weights = sum(v.dtype.size * v.shape.num_elements() for v in model.weights.values()) / 2**20
            values["parts"] = {"process_before_the_model_mb": imported, "weights_mb": weights,
                               "optimizer_state_mb": 2 * weights if optimizer == "adam" else None,
                               "xla_peak_parts": xla_peak_parts(dump, hparams)}
    values["peak_rss_mb"] = peak_rss_mb()
    print("RESULT" + json.dumps(values))


def _dump_dir():
    flags = os.environ.get("XLA_FLAGS", "")
    return flags.split("--xla_dump_to=", 1)[1].split()[0] if "--xla_dump_to=" in flags else None


def activation_kinds(hparams, batch=1):
    """{bytes: kind} of a float32 activation of each kind at `batch` x n_ctx positions (GPT-2's sizes are distinct)."""
    t, e = batch * hparams.n_ctx, hparams.n_embd
    return {4 * batch * hparams.n_head * hparams.n_ctx**2: "attention_probabilities", 4 * t * hparams.n_vocab: "logits",
            4 * (t - batch) * hparams.n_vocab: "logits",  # ours: the last position predicts nothing (step.token_losses)
            4 * t * 4 * e: "mlp", 4 * t * 3 * e: "attention_qkv", 4 * t * e: "layernorm_and_residual"}


def xla_peak_parts(dump, hparams):
    """MiB by kind of what XLA's plan of the training minibatch holds at its peak: its inputs (the weights), what
    the backward pass has made (`gradient_tape/...`: gradients and their temporaries), and the forward pass's
    activations by size (`activation_kinds`); read from the `Stack trace breakdown for peak usage` of its buffer
    assignment, whose top-level entries are TensorFlow's op names."""
    import glob
    import re

    paths = glob.glob(os.path.join(dump, "*minibatch*buffer-assignment.txt"))
    if not paths:  # the step ran as TensorFlow's graph (a CPU's default): no XLA plan to read
        return None
    path = max(paths, key=os.path.getsize)
    with open(path) as f:
        text = f.read().split("Stack trace breakdown for peak usage", 1)[1]
    kinds, parts = activation_kinds(hparams), {}
    for name, size in re.findall(r"\n      [├└]── (\S+) \(.*?total: ([\d ]+) bytes", text):
        size = int(size.replace(" ", ""))
        kind = ("inputs_the_weights" if name == "XLA_Args" else "backward_pass" if name.startswith("gradient_tape/")
                else "logits" if "CrossEntropy" in name else kinds.get(size, "other_forward"))
        parts[kind] = parts.get(kind, 0) + size / 2**20
    return parts


# transformers' fine-tuning alone (no generation before it, as our rows): the same model shape, Adam, batch 1,
# three steps; its peak RSS and the parts of it, the activations autograd saves measured by a saved-tensors hook.
_TRANSFORMERS_MEMORY = r"""
import contextlib, json, os, sys
import numpy as np, torch, transformers
folder, kinds = sys.argv[1], {int(k): v for k, v in json.loads(sys.argv[2]).items()}
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
torch.set_num_threads(os.cpu_count())
imported = rss_mb()
model = transformers.GPT2LMHeadModel.from_pretrained(folder, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).train()
weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 50257, size=(1, model.config.n_positions)))
params = {p.untyped_storage().data_ptr() for p in model.parameters()}
saved = {}
def pack(t):
    storage = t.untyped_storage()
    if storage.data_ptr() not in params:  # a weight saved for its product's backward pass is no extra memory
        saved[storage.data_ptr()] = storage.nbytes()
    return t
def step(hooks):
    with hooks:
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step(contextlib.nullcontext())
with open("/proc/self/status") as f:  # the peak of three plain steps; then one more step, to see what it saves
    peak = int(f.read().split("VmHWM:")[1].split()[0]) / 1024
step(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
activations = {}
for size in saved.values():
    activations[kinds.get(size, "other")] = activations.get(kinds.get(size, "other"), 0) + size / 2**20
print("RESULT" + json.dumps({"peak_rss_mb": peak, "transformers": transformers.__version__, "torch": torch.__version__,
                             "attention": model.config._attn_implementation, "parts": {
    "process_before_the_model_mb": imported, "weights_mb": weights, "gradients_mb": weights,
    "optimizer_state_mb": 2 * weights, "saved_activations_mb": activations}}))
"""


def transformers_memory(make_folder, name, hparams, check_child):
    """Peak RSS and its parts for transformers' fine-tuning of a random-weight model (`make_folder(parent, name,
    hparams)` writes it in OpenAI's layout; exported for it here), loaded as a user loads one: `from_pretrained`
    (`_TRANSFORMERS_MEMORY`)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise SystemExit("--peer transformers needs: pip install torch==2.13.0 transformers")
    from gpt2_simple.formats.folders import export_hf

    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(tmp, name, hparams)
        proc = subprocess.run([sys.executable, "-c", _TRANSFORMERS_MEMORY, export_hf(folder, os.path.join(tmp, "hf")),
                               json.dumps(activation_kinds(hparams))], capture_output=True, text=True, env=env)
    check_child(proc)
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def bench_memory(args, script, check_child, make_folder):
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
            dump = os.path.join(tmp, "xla_dump")  # the Adam row (the defaults) reports its parts from XLA's plan
            env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} "
                       "--xla_dump_hlo_module_re=.*minibatch.*") if (optimizer, recompute) == ("adam", False) else None
            proc = subprocess.run([sys.executable, script, "--memory_child", args.model, optimizer, str(recompute),
                                   "--memory_folder", folder], capture_output=True, text=True, env=env)
            check_child(proc)
            values = json.loads(proc.stdout.split("RESULT", 1)[1])
            name = f"{optimizer}{'_recompute' if recompute else ''}"
            if optimizer == "lora":
                result.update({f"{name}_{key}": value for key, value in values.items()})
            else:
                result.update({f"{name}_peak_rss_mb": values["peak_rss_mb"], f"{name}_step_s": values["step_s"],
                               "weights_rss_mb": values["weights_rss_mb"]})
                if "parts" in values:
                    result[f"{name}_parts"] = values["parts"]
    if "transformers" in (args.peer or []):
        theirs = transformers_memory(make_folder, args.model, PRESETS[args.model], check_child)
        result.update({"transformers_adam_peak_rss_mb": theirs["peak_rss_mb"], "transformers_adam_parts": theirs["parts"],
                       "transformers_attention": theirs["attention"]})
        if "adam_peak_rss_mb" in result:
            result["adam_peak_vs_transformers"] = result["adam_peak_rss_mb"] / theirs["peak_rss_mb"]
    return result
