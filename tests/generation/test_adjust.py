"""OpenAI's presence/frequency penalties, logit_bias and min_p, in both compiled loops."""
import numpy as np
import pytest
import tensorflow as tf

from gpt2_simple.generation.draws import adjust_logits, filter_logits
from gpt2_simple.generation.options import bias_vector
from gpt2_simple.generation.sample import Sampler
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2

CONTEXT = np.array([[1, 2, 3], [4, 5, 6]])


@pytest.fixture(scope="module")
def samplers():
    model = GPT2(HParams(n_vocab=97, n_ctx=16, n_embd=16, n_head=2, n_layer=2), seed=0)
    return Sampler(model), Sampler(model, xla_max_batch=0)


def test_adjust_logits_is_openais_rule_and_neutral_values_are_exact():
    logits = tf.constant([[2.0, -2.0, 3.0, -1.0]])
    seen = tf.constant([[True, False, False, False]])
    counts = tf.constant([[0.0, 2.0, 1.0, 0.0]])
    bias = tf.constant([0.0, 0.0, 0.0, 5.0])
    out = adjust_logits(logits, seen, counts, (1.0, 0.5, 0.25, bias)).numpy()
    # logit - frequency * count - presence * (count > 0) + bias; the repetition penalty 1.0 is off.
    np.testing.assert_allclose(out, [[2.0, -2.0 - 0.5 - 0.5, 3.0 - 0.25 - 0.5, -1.0 + 5.0]])
    neutral = adjust_logits(logits, seen, counts, (1.0, 0.0, 0.0, tf.zeros([4])))
    np.testing.assert_array_equal(neutral.numpy(), logits.numpy())


def test_min_p_keeps_the_tokens_a_numpy_reference_keeps():
    logits = np.random.default_rng(3).normal(size=(4, 50)).astype(np.float32) * 2
    for temperature, min_p in ((1.0, 0.1), (0.7, 0.05), (1.5, 0.3), (1.0, 0.0)):
        probs = np.exp(logits / temperature)
        expected = probs >= min_p * probs.max(-1, keepdims=True)
        kept = filter_logits(tf.constant(logits), temperature, 0, 0.0, min_p=min_p).numpy() > -1e9
        np.testing.assert_array_equal(kept, expected)
        assert 1 < expected.sum() < expected.size or min_p in (0.0, 0.3)


def test_neutral_values_draw_exactly_the_tokens_drawn_without_them(samplers):
    xla, growing = samplers
    for sampler in samplers:
        plain = sampler.sample(CONTEXT, 30, seed=5)
        neutral = sampler.sample(CONTEXT, 30, seed=5, presence_penalty=0.0, frequency_penalty=0.0, logit_bias={},
                                 min_p=0.0)
        np.testing.assert_array_equal(neutral, plain)


@pytest.mark.parametrize("options", [{"presence_penalty": 1.5}, {"frequency_penalty": 0.8, "top_k": 5},
                                     {"logit_bias": {7: 3.0, 11: -2.0}}, {"min_p": 0.8, "temperature": 1.3},
                                     {"presence_penalty": -1.0, "frequency_penalty": 0.5, "min_p": 0.05,
                                      "top_p": 0.9, "logit_bias": {0: 1.0}}])
def test_both_loops_draw_the_same_tokens_and_never_retrace(samplers, options):
    xla, growing = samplers
    plain = growing.sample(CONTEXT, 30, seed=5)
    expected = growing.sample(CONTEXT, 30, seed=5, **options)  # 30 > n_ctx: the window slides too
    assert not np.array_equal(expected, plain)
    np.testing.assert_array_equal(xla.sample(CONTEXT, 30, seed=5, **options), expected)
    np.testing.assert_array_equal(xla.sample(CONTEXT, 30, seed=5, chunk=4, **options), expected)
    assert xla.tracing_count == 2 and growing.tracing_count == 1


def test_logit_bias_forces_or_removes_a_token_under_greedy(samplers):
    for sampler in samplers:
        forced = sampler.sample(CONTEXT, 12, top_k=1, seed=0, logit_bias={42: 100.0})
        np.testing.assert_array_equal(forced, np.full((2, 12), 42))
        greedy = sampler.sample(CONTEXT, 12, top_k=1, seed=0)
        first = int(greedy[0, 0])
        removed = sampler.sample(CONTEXT, 12, top_k=1, seed=0, logit_bias={first: -100.0})
        assert first in greedy[0] and first not in removed[0]


def test_a_large_frequency_penalty_makes_greedy_never_repeat_a_drawn_token(samplers):
    for sampler in samplers:
        greedy = sampler.sample(CONTEXT[:1], 20, top_k=1, seed=0)
        assert len(set(greedy[0].tolist())) < 20  # a random tiny model loops when greedy
        for options in ({"frequency_penalty": 100.0}, {"presence_penalty": 100.0}):
            damped = sampler.sample(CONTEXT[:1], 20, top_k=1, seed=0, **options)
            assert len(set(damped[0].tolist())) == 20


def test_min_p_1_is_greedy(samplers):
    for sampler in samplers:
        greedy = sampler.sample(CONTEXT, 20, top_k=1, seed=0)
        np.testing.assert_array_equal(sampler.sample(CONTEXT, 20, seed=9, temperature=1.5, min_p=1.0), greedy)


def test_a_logit_bias_id_out_of_range_is_an_error_naming_it():
    with pytest.raises(ValueError, match="token id 97"):
        bias_vector({97: 1.0}, 97)
    np.testing.assert_array_equal(bias_vector({3: -2.5}, 5), [0, 0, 0, -2.5, 0])
