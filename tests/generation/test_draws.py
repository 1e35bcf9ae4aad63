"""Every token drawn as the filters say: the noise at its extremes, and draws on the real vocabulary size.

A draw is `argmax(filtered logits + Gumbel noise)`. If the noise is ever infinite, that entry wins
whatever its logit, filtered or not; with 50,257 entries a one-in-2**24 bit pattern is then 0.3%
of all tokens. These tests use the real vocabulary size so that such a rate is seen for sure.
"""
import threading

import numpy as np
import pytest
import tensorflow as tf

from gpt2_simple.generation.draws import _draw, _gumbel, _to_uniform, filter_logits, row_seeds
from gpt2_simple.generation.sample import Sampler
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2

N_VOCAB = 50257
ROWS, LENGTH = 200, 12  # at the old 0.3% a token, 2,400 greedy tokens held ~7 wrong ones (P(none) ~ 7e-4)


def test_extreme_bits_give_uniforms_strictly_inside_0_1_and_finite_noise():
    bits = tf.constant([0, 1, 2**40 - 1, 2**40, 2**63, 2**64 - 2**40, 2**64 - 1], tf.uint64)
    for fn in (lambda b: _to_uniform(b), tf.function(lambda b: _to_uniform(b), jit_compile=True)):
        uniform = fn(bits).numpy()
        assert ((uniform > 0) & (uniform < 1)).all(), uniform
        noise = _gumbel(tf.constant(uniform)).numpy()
        assert np.isfinite(noise).all(), noise
    noise = tf.function(lambda b: _gumbel(_to_uniform(b)), jit_compile=True)(bits).numpy()
    assert np.isfinite(noise).all(), noise


def _nucleus(logits, top_p):
    """NumPy reference: the smallest set of likeliest tokens whose probability reaches top_p (ties kept)."""
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    ordered = np.sort(probs)[::-1]
    n_kept = max(int((np.cumsum(ordered) - ordered < top_p).sum()), 1)
    return probs >= ordered[n_kept - 1]


@pytest.mark.parametrize("spread", [8.0, 0.05], ids=["nucleus_in_the_top_256", "nucleus_of_thousands"])
def test_top_p_keeps_the_nucleus_of_the_whole_vocabulary(spread):
    """top_p finds its nucleus among the 256 likeliest tokens when it lies there, and by a full sort when
    it does not (a flat distribution): both give the reference's set, eagerly and under XLA."""
    logits = np.random.default_rng(3).normal(0, spread, (3, N_VOCAB)).astype(np.float32)
    expected = np.stack([_nucleus(row.astype(np.float64), 0.9) for row in logits])
    sizes = expected.sum(axis=1)
    assert (sizes < 256).all() if spread > 1 else (sizes > 10000).all(), sizes
    xla = tf.function(lambda x: filter_logits(x, 1.0, 0, 0.9, sort=True), jit_compile=True)  # as the XLA loop calls it
    for fn in (lambda x: filter_logits(x, 1.0, 0, 0.9), xla):
        kept = fn(tf.constant(logits)).numpy() > -1e9
        np.testing.assert_array_equal(kept, expected)


def _model():
    """A 2-layer model with the real vocabulary size whose top logits are far apart (no near-ties)."""
    model = GPT2(HParams(n_vocab=N_VOCAB, n_ctx=32, n_embd=16, n_head=2, n_layer=2), seed=0)
    model.wte.assign(model.wte * 100.0)
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def prompts():
    return np.random.default_rng(0).integers(0, N_VOCAB, size=(ROWS, 4)).astype(np.int32)


def _reference_logits(model, history):
    """The last position's logits of a full forward pass: float32 numpy `[batch, n_vocab]`."""
    return model(history).numpy()[:, -1]


def _sample_all(model, prompts, xla_max_batch, **options):
    """ROWS rows of LENGTH tokens in batches of 8, seed i for the batch at row i (the same in both loops)."""
    sampler = Sampler(model, xla_max_batch=xla_max_batch)
    return np.concatenate([sampler.sample(prompts[i:i + 8], LENGTH, seed=i, **options) for i in range(0, ROWS, 8)])


@pytest.fixture(scope="module")
def greedy(model, prompts):
    """The step-by-step argmax of full forward passes: int32 [ROWS, LENGTH]."""
    history = prompts
    for _ in range(LENGTH):
        logits = _reference_logits(model, history)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0] > 1e-3).all()  # no near-tie: the argmax is well defined
        history = np.concatenate([history, logits.argmax(-1)[:, None].astype(np.int32)], axis=1)
    return history[:, prompts.shape[1]:]


@pytest.mark.slow
@pytest.mark.parametrize("xla_max_batch", [8, 0], ids=["xla", "growing"])
def test_greedy_equals_the_step_by_step_argmax_on_the_real_vocabulary(model, prompts, greedy, xla_max_batch):
    out = _sample_all(model, prompts, xla_max_batch, top_k=1)
    wrong = np.argwhere(out != greedy)
    assert not len(wrong), wrong[:10]


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"top_k": 5}, {"top_p": 0.8, "temperature": 0.7}], ids=["top_k", "top_p"])
def test_no_drawn_token_is_outside_the_kept_set_in_either_loop(model, prompts, options):
    out = _sample_all(model, prompts, 8, **options)
    np.testing.assert_array_equal(_sample_all(model, prompts, 0, **options), out)  # both loops draw the same

    history = prompts
    for t in range(LENGTH):
        kept = filter_logits(tf.constant(_reference_logits(model, history)), options.get("temperature", 1.0),
                             options.get("top_k", 0), options.get("top_p", 0.0)).numpy() > -1e9
        outside = np.flatnonzero(~kept[np.arange(ROWS), out[:, t]])
        assert not len(outside), (t, outside, kept.sum(-1)[outside])
        history = np.concatenate([history, out[:, t:t + 1]], axis=1)


# The chi-square bound at a false-alarm rate of 0.001 for 20 likely tokens (19 degrees of freedom).
CHI2_19_P001 = 43.82


@pytest.mark.slow
@pytest.mark.parametrize("loop, options", [
    ("growing", dict(temperature=0.8, top_k=0, top_p=0.0)),
    ("xla", dict(temperature=0.8, top_k=0, top_p=0.0)),
    ("growing", dict(temperature=1.3, top_k=20, top_p=0.0)),  # filters in the XLA loop: the kept-set test above
], ids=["temperature-growing", "temperature-xla", "top_k-growing"])
def test_draws_fit_the_filtered_softmax_on_the_real_vocabulary(loop, options):
    # 20 likely tokens; the other 50,237 hold 2e-9 of the mass in all, so none should ever be drawn.
    rng = np.random.default_rng(1)
    logits = np.full([1, 1, N_VOCAB], -30.0, np.float32)
    likely = rng.choice(N_VOCAB, 20, replace=False)
    logits[0, 0, likely] = rng.normal(0, 1.5, 20)
    expected = tf.nn.softmax(filter_logits(tf.constant(logits[:, -1]), **options)).numpy()[0, likely]
    expected /= expected.sum()

    batch, draws = 500, 8  # 4,000 draws: 500 rows (each its own noise) at 8 indices, seed fixed
    sort = loop == "xla"
    draw = tf.function(lambda lg, i: _draw(lg, i, options["temperature"], options["top_k"], options["top_p"],
                                           tf.constant(row_seeds(3, batch)), sort=sort), jit_compile=sort)
    rows = tf.tile(tf.constant(logits[:, -1]), [batch, 1])
    tokens = np.concatenate([draw(rows, tf.constant(i, tf.int64)).numpy()[:, 0] for i in range(draws)])  # traced once
    outside = np.setdiff1d(tokens, likely)
    assert not len(outside), outside  # 4,000 draws at 2e-9: an unlikely token drawn at all is a failure
    counts = np.array([np.sum(tokens == k) for k in likely])
    chi2 = float(((counts - len(tokens) * expected) ** 2 / (len(tokens) * expected)).sum())
    assert chi2 < CHI2_19_P001, (counts, chi2)


@pytest.mark.slow
def test_two_threads_decoding_at_once_both_get_the_argmax(model, prompts, greedy):
    sampler = Sampler(model)
    sampler.sample(prompts[:8], 2, top_k=1, seed=0)  # compile once before the threads race
    results, errors = {}, []

    def decode(start):
        try:
            results[start] = [sampler.sample(prompts[start:start + 8], LENGTH, top_k=1, seed=s) for s in range(5)]
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=decode, args=(start,)) for start in (0, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for start, outs in results.items():
        for out in outs:
            np.testing.assert_array_equal(out, greedy[start:start + 8])
    assert sorted(results) == [0, 8]
