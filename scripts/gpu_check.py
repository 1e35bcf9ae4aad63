"""The GPU figures docs/performance.md reports, in one process: `bash scripts/gpu_check.sh` runs it after the tests.

    python scripts/gpu_check.py --json gpu.json            # on a machine with a GPU
    python scripts/gpu_check.py --smoke --json smoke.json  # tiny sizes, to try it on a CPU

It measures, on the first device TensorFlow places work on:
- peaks: the matmul TFLOP/s in float32 and bfloat16 (the chip's own, what MFU is held to);
- train: 124M fine-tuning (Adam, context 1024, `--batch` rows, compiled as `finetune` compiles it) in
  float32 and `mixed_bfloat16`: first step, steady step, tokens/s and MFU (6 * params * tokens / time
  against the bfloat16 peak, and the float32 one for float32);
- generate: tokens/s at batch 1 and 8 (32-token prompt, 256 new tokens, second call) with the
  XLA decoding loop and without it (`Sampler(xla_max_batch=0)`: the growing-cache graph);
- lora: the peak device memory of one LoRA step on 1558M (rank 8, all four targets, Adam,
  bfloat16 frozen base, batch 1, context 1024), with and without recompute. On a CPU it is the
  process's peak RSS instead (each configuration then needs its own process to be exact).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "bench"))  # the benchmark's timers and steps, which these figures reuse
sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
from bench_memory import peak_rss_mb  # noqa: E402
from benchmark import (  # noqa: E402
    _full_step,
    _lora_step,
    generate_rates,
    report,
    timed,
)


def device_name():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def peaks(n):
    """Matmul TFLOP/s of an n x n x n product in float32 and bfloat16 (best of 10 after a warm-up)."""
    import tensorflow as tf

    result = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal([n, n]), dtype)
        b = tf.cast(tf.random.normal([n, n]), dtype)
        product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32)))
        product(a, b).numpy()
        result[f"matmul_{dtype.name}_tflops"] = 2 * n**3 / timed(lambda: product(a, b).numpy(), repeat=10) / 1e12
    return result


def train(model_name, batch, precisions, limits):
    import tensorflow as tf

    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2

    hparams = PRESETS[model_name]
    tokens = tf.constant(np.random.default_rng(0).integers(0, hparams.n_vocab, size=(1, batch, hparams.n_ctx)),
                         tf.int32)
    result = {}
    for precision in precisions:
        step = _full_step(GPT2(hparams, seed=0), precision=precision)
        first = timed(lambda: step(tokens).numpy(), repeat=1)
        seconds = timed(lambda: step(tokens).numpy(), repeat=3)
        flops = 6 * hparams.n_params * batch * hparams.n_ctx / seconds
        result[f"{precision}_first_step_s"] = first
        result[f"{precision}_step_s"] = seconds
        result[f"{precision}_tokens_per_s"] = batch * hparams.n_ctx / seconds
        result[f"{precision}_mfu_vs_bfloat16_peak"] = flops / (limits["matmul_bfloat16_tflops"] * 1e12)
        if precision == "float32":
            result["float32_mfu_vs_float32_peak"] = flops / (limits["matmul_float32_tflops"] * 1e12)
        step = None  # the lambdas above name it: free the model before the next precision
    return result


def generate(model_name, new_tokens):
    from gpt2_simple.generation.sample import Sampler
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2

    model = GPT2(PRESETS[model_name], seed=0)
    result = {}
    for label, xla_max_batch in (("xla", 8), ("graph", 0)):
        result.update(generate_rates(Sampler(model, xla_max_batch=xla_max_batch), (1, 8), new_tokens, f"{label}_"))
    return result


def lora_memory(model_name):
    import tensorflow as tf

    from gpt2_simple.model.hparams import PRESETS

    gpu = bool(tf.config.list_physical_devices("GPU"))
    n_ctx = PRESETS[model_name].n_ctx
    tokens = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, n_ctx)), tf.int32)
    result = {}
    for recompute in (False, True):
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        step = _lora_step(model_name, "bfloat16", recompute)
        step(tokens).numpy()
        start = time.perf_counter()
        step(tokens).numpy()
        name = "lora_recompute" if recompute else "lora"
        result[f"{name}_step_s"] = time.perf_counter() - start
        if gpu:
            result[f"{name}_peak_gpu_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        else:
            result[f"{name}_peak_rss_mb"] = peak_rss_mb()  # the process's: the later row includes the earlier
        step = None
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to try the script on a CPU")
    parser.add_argument("--batch", type=int, default=16, help="rows per fine-tuning step")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from gpt2_simple.model.hparams import PRESETS, HParams

    if args.smoke:
        PRESETS["smoke"] = HParams(n_embd=64, n_head=4, n_layer=2, n_ctx=128)
    model, lora_model = ("smoke", "smoke") if args.smoke else ("124M", "1558M")
    results = {"device": device_name()}
    results["peaks"] = peaks(256 if args.smoke else 8192)
    results["train"] = train(model, 2 if args.smoke else args.batch, ("float32", "mixed_bfloat16"), results["peaks"])
    results["generate"] = generate(model, 16 if args.smoke else 256)
    results["lora"] = lora_memory(lora_model)
    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
