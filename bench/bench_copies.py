"""The `copies` section of benchmark.py: the copy index's build time, memory and per-sample check.

Training tokens are drawn from a Zipf-like distribution over GPT-2's 50257 ids at 4.2 bytes of
text a token (English under GPT-2's BPE), with 5% of the stream made of repeated passages, so
the sort meets both distinct and duplicated spans. At each size (`--copies_mb`) it measures the
hashed-8-gram index (`generation/copies.py`), the `avoid_copies=16` guard index and one
XLA-compiled `banned()` call (`generation/copy_guard.py`), decoding at batch 1 with and without
the guard (at the first size only), and, up to `--suffix_array_up_to`
megabytes, a suffix array over the same ids by prefix doubling (NumPy), the other structure the
issue names. Timing goes through benchmark.py's `measured`, so it reads like every other section.
"""
import tracemalloc

import numpy as np

BYTES_PER_TOKEN = 4.2
GUARD_N = 16


def synthetic_tokens(n, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.minimum(rng.zipf(1.2, n) - 1, 50256).astype(np.uint16)
    for _ in range(n // 2000):  # repeated passages of 100 tokens
        src, dst = rng.integers(0, n - 100, 2)
        tokens[dst:dst + 100] = tokens[src:src + 100]
    return tokens


def suffix_array(tokens):
    """Suffix array by prefix doubling: ranks of 2^k-token prefixes, sorted with lexsort each round."""
    n = len(tokens)
    rank = tokens.astype(np.int64)
    k = 1
    while True:
        second = np.full(n, -1, np.int64)
        second[:n - k] = rank[k:]
        order = np.lexsort((second, rank))
        pairs = np.stack([rank[order], second[order]])
        new = np.concatenate([[0], np.cumsum(np.any(pairs[:, 1:] != pairs[:, :-1], axis=0))])
        rank = np.empty(n, np.int64)
        rank[order] = new
        if new[-1] == n - 1:
            return order.astype(np.uint32)
        k *= 2


def _built(build, tokens, measured):
    """(what `build(tokens)` returns, its wall seconds, peak traced bytes while it ran): one build."""
    box = {}
    tracemalloc.start()
    seconds, _ = measured(lambda: box.update(result=build(tokens)), repeat=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return box["result"], seconds, peak


def _guard(tokens, timed, batch=1, calls=200):
    """avoid_copies=GUARD_N: the guard index's build time, its size and one XLA-compiled banned() call."""
    import tensorflow as tf

    from gpt2_simple.generation.copy_guard import GuardIndex, banned
    from gpt2_simple.generation.options import text_tail

    box = {}
    build = timed(lambda: box.update(index=GuardIndex(tokens, GUARD_N)), repeat=1)
    keys, nexts = box["index"].tensors()
    call = tf.function(lambda tail: banned(tail, tf.constant(GUARD_N), keys, nexts, 50257), jit_compile=True)
    tail = tf.constant(text_tail(np.stack([tokens[i:i + GUARD_N] for i in range(batch)])))
    assert call(tail).numpy().any()  # compiles, and the training data's own next token is banned
    per_call = timed(lambda: call(tail).numpy(), repeat=calls)  # the fastest of many: the machine is shared
    return build, box["index"], per_call


def guarded_rates(args, index, timed, new_tokens=128):
    """Decoding at batch 1 on `args.model` (random weights) with and without the guard: tokens/s of each."""
    from gpt2_simple.generation.options import SamplingOptions
    from gpt2_simple.generation.sample import Sampler
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2

    sampler = Sampler(GPT2(PRESETS[args.model], seed=0))
    prompt = np.random.default_rng(0).integers(0, 50257, size=(1, 32))
    guarded = SamplingOptions(avoid_copies=index.n)
    rates = {}
    for name, options, guard in (("unguarded", SamplingOptions(), None), ("guarded", guarded, index)):
        sampler.sample(prompt, new_tokens, seed=0, options=options, guard=guard)  # compiles
        rates[name] = new_tokens / timed(lambda: sampler.sample(prompt, new_tokens, seed=1, options=options,
                                                                guard=guard), repeat=3)
    print(f"decoding at batch 1, {args.model}, avoid_copies={index.n} over {len(index.keys):,} pairs: "
          f"{rates['guarded']:.1f} tokens/s against {rates['unguarded']:.1f} unguarded "
          f"({rates['guarded'] / rates['unguarded']:.2f}x)", flush=True)
    return {f"batch1_{name}_tokens_per_s": rate for name, rate in rates.items()}


def bench_copies(args, timed, measured):
    """{name: value} for each size in `args.copies_mb`; prints one line per measurement as it goes."""
    from gpt2_simple.generation.copies import CopyIndex

    result = {}
    for mb in args.copies_mb:
        tokens = synthetic_tokens(int(mb * 1e6 / BYTES_PER_TOKEN))
        index, seconds, peak = _built(CopyIndex, tokens, measured)
        rng = np.random.default_rng(1)
        samples = [np.concatenate([rng.integers(0, 50257, 100), tokens[o:o + 40], rng.integers(0, 50257, 60)])
                   for o in rng.integers(0, len(tokens) - 40, 200)]
        found = [index.check(s).longest for s in samples]
        assert min(found) >= 40, min(found)  # every planted 40-token span is found
        per_sample = timed(lambda: [index.check(s) for s in samples], repeat=1) / len(samples)
        print(f"{mb:g} MB of text, {len(tokens):,} tokens: hashed 8-grams build {seconds:.1f} s, index "
              f"{index.nbytes / 1e6:.0f} MB, peak while building {peak / 1e6:.0f} MB; "
              f"check of a 200-token sample {per_sample * 1e3:.2f} ms", flush=True)
        key = f"{mb:g}mb"
        result.update({f"{key}_tokens": len(tokens), f"{key}_build_s": seconds, f"{key}_index_mb": index.nbytes / 1e6,
                       f"{key}_build_peak_mb": peak / 1e6, f"{key}_check_ms": per_sample * 1e3})
        build, guard, per_call = _guard(tokens, timed)
        print(f"{mb:g} MB of text: avoid_copies={GUARD_N} guard index build {build:.1f} s, {guard.nbytes / 1e6:.0f} MB; "
              f"banned() at batch 1, 50257 ids, XLA: {per_call * 1e3:.3f} ms a call", flush=True)
        result.update({f"{key}_guard_build_s": build, f"{key}_guard_index_mb": guard.nbytes / 1e6,
                       f"{key}_guard_call_ms": per_call * 1e3})
        if mb == args.copies_mb[0]:
            result.update({f"{key}_{k}": v for k, v in guarded_rates(args, guard, timed).items()})
        if mb <= args.suffix_array_up_to:
            sa, seconds, peak = _built(suffix_array, tokens, measured)
            print(f"{mb:g} MB of text: suffix array (prefix doubling) build {seconds:.1f} s, array "
                  f"{sa.nbytes / 1e6:.0f} MB + tokens, peak while building {peak / 1e6:.0f} MB", flush=True)
            result.update({f"{key}_suffix_array_build_s": seconds, f"{key}_suffix_array_peak_mb": peak / 1e6})
    return result
