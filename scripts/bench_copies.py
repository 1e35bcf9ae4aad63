"""Measure the copy index (generation/copies.py): build time, memory and per-sample check time.

    python scripts/bench_copies.py --megabytes 10 100

Training tokens are drawn from a Zipf-like distribution over GPT-2's 50257 ids at 4.2 bytes of
text a token (English under GPT-2's BPE), with 5% of the stream made of repeated passages, so
the sort meets both distinct and duplicated spans. For comparison it also builds a suffix array
over the same ids by prefix doubling (NumPy), the other structure the issue names.
"""
import argparse
import time
import tracemalloc

import numpy as np

from gpt2_simple.generation.copies import CopyIndex

BYTES_PER_TOKEN = 4.2


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


def measure(build, tokens):
    tracemalloc.start()
    start = time.perf_counter()
    result = build(tokens)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def measure_guard(tokens, n=16, batch=1, calls=200):
    """avoid_copies=n: the guard index's build time and size, and one XLA-compiled banned() call."""
    import tensorflow as tf

    from gpt2_simple.generation.copy_guard import GuardIndex, banned_function

    start = time.perf_counter()
    index = GuardIndex(tokens, n)
    build = time.perf_counter() - start
    banned = tf.function(banned_function(index, 50257), jit_compile=True,
                         input_signature=[tf.TensorSpec([batch, n], tf.int32)])
    recent = tf.constant(np.stack([tokens[i:i + n] for i in range(batch)]).astype(np.int32))
    assert banned(recent).numpy().any()
    times = []
    for _ in range(calls):  # the fastest of many calls: the machine may be shared
        start = time.perf_counter()
        banned(recent).numpy()
        times.append(time.perf_counter() - start)
    return build, index.nbytes, min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--suffix_array_up_to", type=float, default=10, help="megabytes (it is slow)")
    args = parser.parse_args()
    for mb in args.megabytes:
        tokens = synthetic_tokens(int(mb * 1e6 / BYTES_PER_TOKEN))
        index, seconds, peak = measure(lambda t: CopyIndex(t), tokens)
        rng = np.random.default_rng(1)
        samples = [np.concatenate([rng.integers(0, 50257, 100), tokens[o:o + 40], rng.integers(0, 50257, 60)])
                   for o in rng.integers(0, len(tokens) - 40, 200)]
        start = time.perf_counter()
        found = [index.check(s).longest for s in samples]
        per_sample = (time.perf_counter() - start) / len(samples)
        assert min(found) >= 40, min(found)
        print(f"{mb:g} MB of text, {len(tokens):,} tokens: hashed 8-grams build {seconds:.1f} s, index "
              f"{index.nbytes / 1e6:.0f} MB, peak while building {peak / 1e6:.0f} MB; "
              f"check of a 200-token sample {per_sample * 1e3:.2f} ms")
        build, nbytes, per_call = measure_guard(tokens)
        print(f"{mb:g} MB of text: avoid_copies=16 guard index build {build:.1f} s, {nbytes / 1e6:.0f} MB; "
              f"banned() at batch 1, 50257 ids, XLA: {per_call * 1e3:.3f} ms a call")
        if mb <= args.suffix_array_up_to:
            sa, seconds, peak = measure(suffix_array, tokens)
            print(f"{mb:g} MB of text: suffix array (prefix doubling) build {seconds:.1f} s, array "
                  f"{sa.nbytes / 1e6:.0f} MB + tokens, peak while building {peak / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
