"""The copy guard's graph function against a NumPy reference, compiled by XLA."""
import numpy as np
import pytest
import tensorflow as tf

from gpt2_simple.generation.copy_guard import GuardIndex, banned_function

N, VOCAB = 3, 40


@pytest.fixture(scope="module")
def guard():
    tokens = np.random.default_rng(0).integers(0, 30, 3000).astype(np.uint16)  # ids 30..39 never occur
    index = GuardIndex(tokens, N)
    banned = tf.function(banned_function(index, VOCAB), jit_compile=True,
                         input_signature=[tf.TensorSpec([16, N], tf.int32)])
    return tokens, index, banned


def _reference(tokens, rows):
    """Brute force: token t is banned after row r when r + [t] occurs in `tokens`."""
    out = np.zeros((len(rows), VOCAB), bool)
    for i, row in enumerate(rows):
        if (row < 0).any():
            continue
        for p in range(len(tokens) - N):
            if (tokens[p:p + N] == row).all():
                out[i, tokens[p + N]] = True
    return out


def test_banned_equals_the_numpy_reference(guard):
    tokens, index, banned = guard
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 30, (16, N)).astype(np.int32)
    starts = rng.integers(0, len(tokens) - N, 8)
    rows[:8] = np.stack([tokens[s:s + N] for s in starts])  # spans of the training data
    rows[8, 0] = 35  # an id the data never holds
    rows[9, :2] = -1  # a row shorter than N
    rows[10] = tokens[-N:]  # the last span, which nothing follows (unless it occurs earlier too)
    got = banned(tf.constant(rows)).numpy()
    expected = _reference(tokens.astype(np.int64), rows.astype(np.int64))
    assert got.shape == (16, VOCAB)
    np.testing.assert_array_equal(got, expected)
    assert expected[:8].any(axis=1).all() and not expected[8].any() and not expected[9].any()


def test_the_index_holds_each_pair_once(guard):
    tokens, index, _ = guard
    pairs = {(tuple(tokens[p:p + N]), tokens[p + N]) for p in range(len(tokens) - N)}
    assert len(index.keys) == len(pairs) and (np.diff(index.keys) >= 0).all()


def test_bad_span_length_is_refused():
    with pytest.raises(ValueError, match=r"avoid_copies=0 must be a positive number of tokens"):
        GuardIndex(np.arange(10), 0)
