"""The copy guard: its graph function against a NumPy reference, and `avoid_copies` in both decoding loops."""
import numpy as np
import pytest
import tensorflow as tf

from gpt2_simple.generation.copy_guard import WINDOW, GuardIndex, banned, check_span
from gpt2_simple.generation.options import SamplingOptions, text_tail
from gpt2_simple.generation.sample import Sampler

VOCAB = 40


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).integers(0, 30, 3000).astype(np.uint16)  # ids 30..39 never occur


@pytest.fixture(scope="module")
def compiled():
    """banned() compiled once by XLA; the span length and the index are inputs."""
    return tf.function(lambda tail, n, keys, nexts: banned(tail, n, keys, nexts, VOCAB), jit_compile=True)


def _reference(tokens, rows, n):
    """Brute force: token t is banned after row r when r's last n tokens + [t] occur in `tokens`."""
    out = np.zeros((len(rows), VOCAB), bool)
    for i, row in enumerate(rows):
        last = row[-n:]
        if (last < 0).any():
            continue
        for p in range(len(tokens) - n):
            if (tokens[p:p + n] == last).all():
                out[i, tokens[p + n]] = True
    return out


@pytest.mark.parametrize("n", [3, 5])
def test_banned_equals_the_numpy_reference(data, compiled, n):
    rng = np.random.default_rng(n)
    rows = rng.integers(0, 30, (16, 2 * n)).astype(np.int32)
    starts = rng.integers(0, len(data) - n, 8)
    rows[:8, -n:] = np.stack([data[s:s + n] for s in starts])  # spans of the training data
    rows[8, -1] = 35  # an id the data never holds
    rows[9, :-n + 1] = -1  # a row shorter than n
    rows[10, -n:] = data[-n:]  # the last span, which nothing follows (unless it occurs earlier too)
    rows[11, 0], rows[11, -n:] = -1, data[100:100 + n]  # a gap before the last n tokens does not matter
    index = GuardIndex(data, n)
    keys, nexts = index.tensors()
    got = compiled(tf.constant(text_tail(rows)), tf.constant(n), tf.constant(keys), tf.constant(nexts)).numpy()
    expected = _reference(data.astype(np.int64), rows.astype(np.int64), n)
    assert got.shape == (16, VOCAB)
    np.testing.assert_array_equal(got, expected)
    assert expected[:8].any(axis=1).all() and not expected[8].any() and not expected[9].any()
    assert expected[11].any()


def test_the_index_holds_each_pair_once(data):
    n = 3
    index = GuardIndex(data, n)
    pairs = {(tuple(data[p:p + n]), data[p + n]) for p in range(len(data) - n)}
    assert len(index.keys) == len(pairs) and (np.diff(index.keys) >= 0).all()


@pytest.mark.parametrize("bad", [-1, WINDOW + 1, 2.5, True, "8"])
def test_bad_span_length_is_refused(bad):
    with pytest.raises(ValueError, match=rf"avoid_copies={bad!r} must be a number of tokens from 1 to {WINDOW}"):
        check_span(bad)
    assert check_span(0) == 0 and check_span(WINDOW) == WINDOW


def _spans(tokens, n):
    return {tuple(tokens[p:p + n]) for p in range(len(tokens) - n + 1)}


@pytest.fixture(scope="module")
def memorized(memorized_run):
    """The memorized run loaded, with its training tokens."""
    import gpt2_simple as gpt2

    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), checkpoint_dir=memorized_run[2])
    return sess, [int(t) for t in sess.copy_index().tokens]


@pytest.mark.slow  # the memorized run's fixture
def test_guarded_samples_share_no_span_longer_than_n(memorized):
    """Unguarded, the run copies far more than N tokens; guarded, no N + 1 tokens of a sample (prompt included)
    occur in the training tokens, in the XLA loop and the graph loop alike, which draw the same tokens."""
    sess, training = memorized
    n = 6
    guard = sess.copy_guard(n)
    banned_spans = _spans(training, n + 1)
    context = np.full((4, 1), sess.encoder.eot_token, np.int32)
    options = SamplingOptions(temperature=0.1, avoid_copies=n)
    free = sess.sampler.sample(context, 40, seed=0, temperature=0.1)
    assert all(_spans([int(t) for t in row], 12) & _spans(training, 12) for row in free)  # it copies
    count = sess.sampler.tracing_count
    outs = [sampler.sample(context, 40, seed=0, options=options, guard=guard)
            for sampler in (sess.sampler, Sampler(sess.model, xla_max_batch=0))]
    assert sess.sampler.tracing_count == count  # the guard is an input: turning it on never retraces
    np.testing.assert_array_equal(outs[0], outs[1])
    for row in outs[0]:
        text = [sess.encoder.eot_token] + [int(t) for t in row]
        assert len(text) == 41 and not _spans(text, n + 1) & banned_spans, text
    assert (sess.sampler.sample(context, 40, seed=0, temperature=0.1) == free).all()  # off again: as before


@pytest.mark.slow  # the memorized run's fixture
def test_generate_and_stream_take_avoid_copies(memorized):
    import gpt2_simple as gpt2

    sess, _ = memorized
    n = 10
    free = gpt2.generate(sess, return_as_list=True, nsamples=2, batch_size=2, length=30, seed=0, temperature=0.1,
                         check_copies=True)
    assert min(text.copy.longest for text in free) > n
    texts = gpt2.generate(sess, return_as_list=True, nsamples=2, batch_size=2, length=30, seed=0, temperature=0.1,
                          check_copies=True, avoid_copies=n)
    assert all(text.copy.longest <= n for text in texts), [text.copy for text in texts]
    streamed = "".join(gpt2.generate_stream(sess, seed=0, length=30, temperature=0.1, avoid_copies=n))
    assert streamed == gpt2.generate(sess, return_as_list=True, length=30, seed=0, temperature=0.1,
                                     avoid_copies=n)[0]
    with pytest.raises(ValueError, match="avoid_copies=65 must be"):
        gpt2.generate(sess, return_as_list=True, length=4, avoid_copies=65)
