"""The `logprobs` section of benchmark.py: tokens/s with and without the server's scoring pass.

A random-weight model (`--model`, 124M by default) generates NEW_TOKENS after a PROMPT_TOKENS
prompt with the server's sampler, chunk by chunk as the batcher runs it; with `logprobs`, the
batcher then scores every row (prompt and drawn tokens) in one forward pass (`scores.LogprobScorer`).
Each batch size in `--logprobs_batches` is timed after a warm-up call, best of three, through
benchmark.py's `timed`.
"""
import numpy as np

PROMPT_TOKENS, NEW_TOKENS = 16, 64


def bench_logprobs(args, timed):
    """{name: value} for each batch size; prints one line per batch as it goes."""
    from gpt2_simple.generation.sample import Sampler
    from gpt2_simple.generation.scores import LogprobScorer
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2
    from gpt2_simple.serving.batcher import CHUNK
    from gpt2_simple.session import start_tf_sess

    start_tf_sess()  # the thread settings the server uses
    model = GPT2(PRESETS[args.model], seed=0)
    sampler, scorer = Sampler(model), LogprobScorer(model)
    result = {}
    for batch in args.logprobs_batches:
        prompt = np.random.default_rng(0).integers(0, 50257, [batch, PROMPT_TOKENS]).astype(np.int32)
        out = {}

        def sample():
            out["tokens"] = sampler.sample(prompt, NEW_TOKENS, seed=1, chunk=CHUNK)

        def score():
            scorer.score([list(p) + list(t) for p, t in zip(prompt, out["tokens"])])

        sample(), score()  # compile both
        generate_s, score_s = timed(sample), timed(score)
        plain, scored = batch * NEW_TOKENS / generate_s, batch * NEW_TOKENS / (generate_s + score_s)
        print(f"batch {batch:2d}: {plain:7.1f} tokens/s without logprobs, {scored:7.1f} with "
              f"({100 * (1 - scored / plain):.1f}% fewer; the scoring pass takes {score_s * 1000:.0f} ms)", flush=True)
        result.update({f"batch{batch}_tokens_per_s": plain, f"batch{batch}_logprobs_tokens_per_s": scored,
                       f"batch{batch}_fewer_percent": 100 * (1 - scored / plain), f"batch{batch}_score_ms": score_s * 1000})
    return result
