"""bfloat16 against float32, ours and PyTorch's, in one run (`--only precision`).

For each side: the step's speed at the training section's shape (124M, batch 1, context 1024,
Adam), float32 and bfloat16 compute, and a loss curve of `CURVE_STEPS` steps of `CURVE_CONTEXT`
tokens over the same English-like text from the same random weights (`precision="mixed_bfloat16"`
for us, `torch.autocast("cpu", torch.bfloat16)` for transformers). A bfloat16 row is worth shipping
where it is faster and its final loss (the mean of the last `TAIL` steps) stays within 1% of its
float32 row's.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CURVE_STEPS, CURVE_CONTEXT, TAIL = 200, 128, 10
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # the row's name -> our precision=

_TORCH = r"""
import json, os, sys, time
import numpy as np, torch, transformers
folder, tokens_path, steps, context = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(os.cpu_count())
text, full = np.load(tokens_path), torch.from_numpy(np.random.default_rng(0).integers(0, 50257, size=(1, 1024)))
result = {}
for name in ("float32", "bfloat16"):
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    result[name + "_losses"] = [step(torch.from_numpy(text[i * context:(i + 1) * context][None].astype(np.int64)))
                                for i in range(steps)]
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        step(full)
        seconds.append(time.perf_counter() - start)
    result[name + "_step_s"] = min(seconds[1:])
print("RESULT" + json.dumps(result))
"""


def bench_precision(args, check_child, make_folder, full_step, text_tokens):
    """The rows above for us and (with `--peer transformers`) for transformers; `text_tokens(n)`: n token ids."""
    from gpt2_simple.formats.folders import export_hf
    from gpt2_simple.model.hparams import PRESETS

    text = np.asarray(text_tokens(CURVE_STEPS * CURVE_CONTEXT), np.int32)
    result = {"curve": f"{CURVE_STEPS} steps of {CURVE_CONTEXT} tokens, Adam 1e-4, final = mean of the last {TAIL}"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(tmp, args.model, PRESETS[args.model])
        sides = {"ours": {name: _ours(folder, precision, text, full_step) for name, precision in PRECISIONS.items()}}
        if "transformers" in (args.peer or []):
            np.save(os.path.join(tmp, "text.npy"), text)
            proc = subprocess.run([sys.executable, "-c", _TORCH, export_hf(folder, os.path.join(tmp, "hf")),
                                   os.path.join(tmp, "text.npy"), str(CURVE_STEPS), str(CURVE_CONTEXT)],
                                  capture_output=True, text=True, cwd=tmp,
                                  env=dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error"))
            check_child(proc)
            theirs = json.loads(proc.stdout.split("RESULT", 1)[1])
            sides["transformers"] = {name: {"losses": theirs[name + "_losses"], "step_s": theirs[name + "_step_s"]}
                                     for name in PRECISIONS}
    for side, rows in sides.items():
        for name, row in rows.items():
            result[f"{side}_{name}_tokens_per_s"] = 1024 / row["step_s"]
            result[f"{side}_{name}_first_loss"] = row["losses"][0]
            result[f"{side}_{name}_final_loss"] = float(np.mean(row["losses"][-TAIL:]))
            result[f"{side}_{name}_curve"] = [round(loss, 3) for loss in row["losses"][::20]]
        result[f"{side}_bfloat16_speedup"] = rows["float32"]["step_s"] / rows["bfloat16"]["step_s"]
        result[f"{side}_bfloat16_final_loss_vs_float32"] = (result[f"{side}_bfloat16_final_loss"]
                                                            / result[f"{side}_float32_final_loss"] - 1)
    return result


def _ours(folder, precision, text, full_step):
    """Our loss curve, then our step time at context 1024, from `folder`'s weights, with `precision`."""
    import tensorflow as tf

    from gpt2_simple.formats.folders import load_model

    step = full_step(load_model(folder), precision=precision)
    windows = text[:CURVE_STEPS * CURVE_CONTEXT].reshape(CURVE_STEPS, 1, 1, CURVE_CONTEXT)
    losses = [float(step(tf.constant(window)).numpy()) for window in windows]
    full = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, 1024)), tf.int32)
    step(full).numpy()
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        step(full).numpy()
        seconds.append(time.perf_counter() - start)
    return {"losses": losses, "step_s": min(seconds)}
