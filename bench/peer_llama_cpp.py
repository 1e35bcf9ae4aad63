"""The llama.cpp peer of `benchmark.py`: our GGUF export loaded and run by llama.cpp itself.

`python bench/benchmark.py --only generate --peer llama.cpp` writes the benchmark's
random-weight model with `export_gguf` at f32, f16 and q8_0, then, in a subprocess, loads each
file with `llama-cpp-python` (llama.cpp built from source) and

- checks that llama.cpp's logits on the f32 file match ours on a 32-token prompt (largest
  difference relative to the largest logit, and the same argmax at every position);
- times the generate workload of the benchmark at batch 1: the 32-token prompt, then 256 new
  tokens, each drawn from the softmax of the logits (temperature 1, no top-k, as ours), second
  call. Its threads are this machine's cores, as ours.

A crash of llama.cpp on the f16 or q8_0 file is reported as `<dtype>_failed` and the run goes
on (seen once: a prebuilt llama-cpp-python 0.3.36 wheel segfaulted in `llama_decode` on q8_0);
on the f32 file, which the ratios need, it stops the run.

Install: `pip install llama-cpp-python` (it compiles llama.cpp with cmake: minutes, once).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

DTYPES = ("f32", "f16", "q8_0")

# One file per call: the logits check (f32 only) and the timed batch-1 generation.
_LLAMA_CPP_RUN = r"""
import json, os, sys, time
import numpy as np
import llama_cpp
path, prompt_seed, new_tokens, logits_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
threads = os.cpu_count()
prompt = np.random.default_rng(prompt_seed).integers(0, 50257, size=32).tolist()
result = {"llama_cpp_python": llama_cpp.__version__}
if logits_path != "-":
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          logits_all=True, verbose=False)
    llm.eval(prompt)
    np.save(logits_path, np.array(llm.scores[: llm.n_tokens], np.float32))
    del llm
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                      verbose=False)
rng = np.random.default_rng(0)
def generate():
    llm.reset()
    llm.eval(prompt)
    for _ in range(new_tokens):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], np.float64)
        p = np.exp(logits - logits.max())
        token = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum()))
        llm.eval([min(token, 50256)])
seconds = []
for _ in range(3):
    start = time.perf_counter()
    generate()
    seconds.append(time.perf_counter() - start)
result["first_s"], result["second_s"] = seconds[0], min(seconds[1:])
print("RESULT" + json.dumps(result))
"""


def bench_peer_llama_cpp(args, ours, openai_folder, check_child):
    """llama.cpp on our export: its logits against ours (f32), and batch-1 tokens/s at f32, f16 and q8_0.

    Args:
        args: the benchmark's arguments (`model`, `new_tokens`).
        ours: the results so far; with a `generate` section, the ratios to ours are added.
        openai_folder, check_child: `benchmark.py`'s random-weight folder maker and subprocess check.
    """
    import gpt2_simple as gpt2
    from gpt2_simple.model.hparams import PRESETS

    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("--peer llama.cpp needs: pip install llama-cpp-python (builds llama.cpp with cmake)")
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit("--peer llama.cpp needs the gguf writer: pip install -e '.[gguf]'")
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = openai_folder(tmp, args.model, PRESETS[args.model])
        for dtype in DTYPES:
            path = gpt2.export_gguf(folder, os.path.join(tmp, f"{args.model}-{dtype}.gguf"), dtype=dtype)
            result[f"{dtype}_file_mb"] = os.path.getsize(path) / 1e6
            logits_path = os.path.join(tmp, "logits.npy") if dtype == "f32" else "-"
            proc = subprocess.run([sys.executable, "-c", _LLAMA_CPP_RUN, path, "1", str(args.new_tokens), logits_path],
                                  capture_output=True, text=True, cwd=tmp)
            if proc.returncode and dtype != "f32":  # a crash of llama.cpp's own kernels: say so, keep the run
                result[f"{dtype}_failed"] = f"llama.cpp exited {proc.returncode}"
                continue
            check_child(proc)
            theirs = json.loads(proc.stdout.split("RESULT", 1)[1])
            result["llama_cpp_python"] = theirs["llama_cpp_python"]
            result[f"{dtype}_batch1_first_call_tokens_per_s"] = args.new_tokens / theirs["first_s"]
            result[f"{dtype}_batch1_tokens_per_s"] = args.new_tokens / theirs["second_s"]
            if dtype == "f32":
                result.update(_logits_check(np.load(logits_path), gpt2.load_model(folder)))
    if "generate" in ours:
        for dtype in (d for d in DTYPES if f"{d}_failed" not in result):
            result[f"ours_vs_{dtype}_batch1"] = ours["generate"]["batch1_tokens_per_s"] / result[f"{dtype}_batch1_tokens_per_s"]
    return result


def _logits_check(theirs, model):
    """How far llama.cpp's logits `[32, n_vocab]` on prompt seed 1 are from ours."""
    prompt = np.random.default_rng(1).integers(0, 50257, size=(1, 32))
    ours = model.forward(prompt)[0][0].numpy()
    return {"max_logit_diff": float(np.abs(theirs - ours).max()),
            "max_relative_logit_diff": float(np.abs(theirs - ours).max() / np.abs(ours).max()),
            "same_argmax_positions": int((theirs.argmax(-1) == ours.argmax(-1)).sum()),
            "positions": int(ours.shape[0])}
