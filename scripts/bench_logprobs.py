"""What `logprobs` costs the server: tokens/s with and without the scoring pass, at batch 1 and 16.

A random-weight 124M model generates NEW_TOKENS after a PROMPT_TOKENS prompt with the server's
sampler, chunk by chunk as the batcher runs it; with `logprobs`, the batcher then scores every
row (prompt and drawn tokens) in one forward pass (`scores.Scorer`). Both are timed after a
warm-up call, best of REPEAT. Run: python scripts/bench_logprobs.py
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

PROMPT_TOKENS, NEW_TOKENS, REPEAT = 16, 64, 3


def _best(call):
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    from gpt2_simple.generation.batcher import CHUNK
    from gpt2_simple.generation.sample import Sampler
    from gpt2_simple.generation.scores import Scorer
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2
    from gpt2_simple.session import start_tf_sess

    start_tf_sess()  # the thread settings the server uses
    model = GPT2(PRESETS["124M"], seed=0)
    sampler, scorer = Sampler(model), Scorer(model)
    for batch in (1, 16):
        prompt = np.random.default_rng(0).integers(0, 50257, [batch, PROMPT_TOKENS]).astype(np.int32)
        out = {}

        def sample():
            out["tokens"] = sampler.sample(prompt, NEW_TOKENS, seed=1, chunk=CHUNK)

        def score():
            scorer.score([list(p) + list(t) for p, t in zip(prompt, out["tokens"])])

        sample(), score()  # compile both
        generate_s, score_s = _best(sample), _best(score)
        plain, scored = batch * NEW_TOKENS / generate_s, batch * NEW_TOKENS / (generate_s + score_s)
        print(f"batch {batch:2d}: {plain:7.1f} tokens/s without logprobs, {scored:7.1f} with "
              f"({100 * (1 - scored / plain):.1f}% fewer; the scoring pass takes {score_s * 1000:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
