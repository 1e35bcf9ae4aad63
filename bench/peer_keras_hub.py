"""The keras-hub peer of `benchmark.py`: `GPT2CausalLM` on the TensorFlow backend, with our weights.

`python bench/benchmark.py --peer keras-hub` copies the benchmark's random-weight model into a
keras-hub `GPT2Backbone` by name (as keras-hub's own Hugging Face converter maps GPT-2), checks
its logits against ours, then runs the benchmark's workloads in a subprocess: generation at
batch 1 and 8 (32-token prompt, 256 new tokens, `RandomSampler`, i.e. temperature 1 and no
top-k, as ours; first and second call) and one fine-tuning step (batch 1, full context, Adam,
dropout off). Each runs twice: with keras' default `jit_compile="auto"`, which Keras resolves to
no XLA on a machine without a GPU (the figure reports what it chose), and with XLA forced on.

Install: `pip install --no-deps keras-hub` (a plain install pulls tensorflow-text,
which installs the full `tensorflow` beside `tensorflow-cpu`; the GPT-2 model itself needs none
of it, since prompts are given as token ids).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_KERAS_HUB_RUN = r"""
import json, os, sys, time
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np
import keras, keras_hub
weights_path, hparams, new_tokens, logits_path = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
e, n_head = hparams["n_embd"], hparams["n_head"]
backbone = keras_hub.models.GPT2Backbone(
    vocabulary_size=hparams["n_vocab"], num_layers=hparams["n_layer"], num_heads=n_head, hidden_dim=e,
    intermediate_dim=4 * e, dropout=0.0, max_sequence_length=hparams["n_ctx"])
w = np.load(weights_path)
backbone.token_embedding.embeddings.assign(w["model/wte"])
backbone.position_embedding.position_embeddings.assign(w["model/wpe"])
for i, layer in enumerate(backbone.transformer_layers):
    p = f"model/h{i}/"
    attn = layer._self_attention_layer
    qkv_w, qkv_b = w[p + "attn/c_attn/w"][0], w[p + "attn/c_attn/b"]
    for j, dense in enumerate((attn.query_dense, attn.key_dense, attn.value_dense)):
        dense.kernel.assign(qkv_w[:, j * e:(j + 1) * e].reshape(dense.kernel.shape))
        dense.bias.assign(qkv_b[j * e:(j + 1) * e].reshape(dense.bias.shape))
    attn.output_dense.kernel.assign(w[p + "attn/c_proj/w"][0].reshape(attn.output_dense.kernel.shape))
    attn.output_dense.bias.assign(w[p + "attn/c_proj/b"])
    for norm, name in ((layer._self_attention_layer_norm, "ln_1"), (layer._feedforward_layer_norm, "ln_2")):
        norm.gamma.assign(w[p + name + "/g"]); norm.beta.assign(w[p + name + "/b"])
    layer._feedforward_intermediate_dense.kernel.assign(w[p + "mlp/c_fc/w"][0])
    layer._feedforward_intermediate_dense.bias.assign(w[p + "mlp/c_fc/b"])
    layer._feedforward_output_dense.kernel.assign(w[p + "mlp/c_proj/w"][0])
    layer._feedforward_output_dense.bias.assign(w[p + "mlp/c_proj/b"])
backbone.layer_norm.gamma.assign(w["model/ln_f/g"]); backbone.layer_norm.beta.assign(w["model/ln_f/b"])
prompts = {b: np.random.default_rng(b).integers(0, 50257, size=(b, 32)).astype("int32") for b in (1, 8)}
check = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
np.save(logits_path, np.asarray(check({"token_ids": prompts[1], "padding_mask": np.ones_like(prompts[1], bool)}))[0])
result = {"keras_hub": keras_hub.__version__, "keras": keras.__version__}
n_ctx = hparams["n_ctx"]
tokens = np.random.default_rng(0).integers(0, 50257, size=(1, n_ctx + 1)).astype("int32")
for setting, jit in (("default", "auto"), ("xla", True)):
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler=keras_hub.samplers.RandomSampler(), jit_compile=jit)
    out = {"used_xla": bool(lm.jit_compile)}
    for b, prompt in prompts.items():
        ids = np.zeros((b, 32 + new_tokens), "int32"); ids[:, :32] = prompt
        mask = np.zeros(ids.shape, bool); mask[:, :32] = True
        inputs = {"token_ids": ids, "padding_mask": mask}
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            generated = lm.generate(inputs, stop_token_ids=None)
            seconds.append(time.perf_counter() - start)
        assert np.asarray(generated["token_ids"]).shape == (b, 32 + new_tokens)
        out[f"batch{b}_first_s"], out[f"batch{b}_second_s"] = seconds[0], min(seconds[1:])
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(optimizer=keras.optimizers.Adam(1e-4), sampler="random", jit_compile=jit,
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = {"token_ids": tokens[:, :n_ctx], "padding_mask": np.ones((1, n_ctx), bool)}
    seconds = []
    for _ in range(4):
        start = time.perf_counter()
        lm.train_on_batch(x, tokens[:, 1:])
        seconds.append(time.perf_counter() - start)
    out["train_first_step_s"], out["train_step_s"] = seconds[0], min(seconds[1:])
    result[setting] = out
with open("/proc/self/status") as f:
    result["peak_rss_mb"] = int(f.read().split("VmHWM:")[1].split()[0]) / 1024
print("RESULT" + json.dumps(result))
"""


def bench_peer_keras_hub(args, ours, openai_folder, check_child, peer_result):
    """keras-hub's GPT2CausalLM on our weights: logits against ours, then generate and train, default and XLA.

    Args:
        args: the benchmark's arguments (`model`, `new_tokens`).
        ours: the results so far (for the ratios).
        openai_folder, check_child, peer_result: `benchmark.py`'s folder maker, subprocess check
            and tokens/s-and-ratios helper.
    """
    import gpt2_simple as gpt2
    from gpt2_simple.formats.checkpoint import numpy_weights
    from gpt2_simple.model.hparams import PRESETS

    if importlib.util.find_spec("keras_hub") is None:
        raise SystemExit("--peer keras-hub needs: pip install --no-deps keras-hub")
    hparams = PRESETS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        model = gpt2.load_model(openai_folder(tmp, args.model, hparams))
        weights_path, logits_path = os.path.join(tmp, "weights.npz"), os.path.join(tmp, "logits.npy")
        np.savez(weights_path, **numpy_weights(model))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", KERAS_BACKEND="tensorflow")
        proc = subprocess.run([sys.executable, "-c", _KERAS_HUB_RUN, weights_path, json.dumps(hparams.to_dict()),
                               str(args.new_tokens), logits_path], capture_output=True, text=True, env=env, cwd=tmp)
        check_child(proc)
        theirs_logits = np.load(logits_path)
        ours_logits = model.forward(np.random.default_rng(1).integers(0, 50257, size=(1, 32)))[0][0].numpy()
    theirs = json.loads(proc.stdout.split("RESULT", 1)[1])
    result = {"max_logit_diff": float(np.max(np.abs(theirs_logits - ours_logits))),
              "same_argmax_positions": int((theirs_logits.argmax(-1) == ours_logits.argmax(-1)).sum())}
    result.update({key: theirs[key] for key in ("keras_hub", "keras", "peak_rss_mb")})
    for setting in ("default", "xla"):
        values = theirs[setting]
        result[f"{setting}_used_xla"] = values["used_xla"]
        result[f"{setting}_train_first_step_s"] = values["train_first_step_s"]
        result.update({f"{setting}_{key}": value for key, value in peer_result(args, ours, values).items()})
    return result
