"""The sampler: logit filters without a model, reproducible draws, no retracing, sliding window."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpt2_simple.generation.decoding import Decoding
from gpt2_simple.generation.joining import Joining, place
from gpt2_simple.generation.options import NO_TOKEN, SamplingOptions
from gpt2_simple.generation.draws import _draw, filter_logits, penalize
from gpt2_simple.generation.sample import Sampler
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2

LOGITS = tf.constant([[1.0, 4.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 10.0, -1.0]])


def _kept(filtered):
    return (filtered.numpy() > -1e9).astype(int).tolist()


def test_filters_keep_the_right_tokens():
    assert _kept(filter_logits(LOGITS, 1.0, 0, 0.0)) == [[1] * 5, [1] * 5]
    assert _kept(filter_logits(LOGITS, 1.0, 2, 0.0)) == [[0, 1, 0, 1, 0], [1, 1, 1, 1, 0]]  # ties at the kth kept
    assert _kept(filter_logits(LOGITS, 1.0, 1, 0.0)) == [[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]
    # Row 0 probabilities (sorted): .644 .237 .087 .032 .012 -> top_p 0.7 keeps two, 0.5 keeps one.
    assert _kept(filter_logits(LOGITS, 1.0, 0, 0.7)) == [[0, 1, 0, 1, 0], [0, 0, 0, 1, 0]]
    assert _kept(filter_logits(LOGITS, 1.0, 0, 0.5)) == [[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]
    # top_p replaces top_k, as in gpt-2-simple.
    assert _kept(filter_logits(LOGITS, 1.0, 1, 0.7)) == [[0, 1, 0, 1, 0], [0, 0, 0, 1, 0]]
    np.testing.assert_allclose(filter_logits(LOGITS, 0.5, 0, 0.0).numpy(), LOGITS.numpy() * 2)


def test_filters_never_empty_or_nan_at_extremes():
    for top_p in (1e-9, 1.0):
        out = filter_logits(LOGITS, 1e-3, 0, top_p).numpy()
        assert not np.isnan(out).any() and ((out > -1e9).sum(-1) >= 1).all()
    out = filter_logits(tf.fill([1, 7], -np.float32(3e38)), 1.0, 3, 0.0).numpy()
    assert not np.isnan(out).any()


def _model(n_ctx=32):
    return GPT2(HParams(n_vocab=97, n_ctx=n_ctx, n_embd=16, n_head=2, n_layer=2), seed=0)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_independent_of_chunking():
    sampler = Sampler(_model())
    context = np.array([[3, 1, 4], [1, 5, 9]])
    a = sampler.sample(context, 20, seed=7)
    assert a.shape == (2, 20) and a.dtype == np.int32 and a.min() >= 0 and a.max() < 97
    np.testing.assert_array_equal(a, sampler.sample(context, 20, seed=7))
    np.testing.assert_array_equal(a, sampler.sample(context, 20, seed=7, chunk=6))
    assert not np.array_equal(a, sampler.sample(context, 20, seed=8))


@pytest.mark.slow
def test_greedy_sampling_equals_argmax_of_full_forward():
    model = _model()
    sampler = Sampler(model)
    tokens = np.array([[5, 6, 7]])
    out = sampler.sample(tokens, 10, top_k=1, seed=0)
    expected = tokens
    for _ in range(10):
        nxt = np.argmax(model(expected).numpy()[:, -1], axis=-1)[:, None]
        expected = np.concatenate([expected, nxt], axis=1)
    np.testing.assert_array_equal(out, expected[:, 3:])


@pytest.mark.slow
def test_no_retrace_for_new_lengths_batches_and_options():
    sampler = Sampler(_model())
    sampler.sample(np.array([[1]]), 3, seed=0)
    assert sampler.tracing_count == 2  # the prompt loop and the XLA loop, once each
    sampler.sample(np.array([[1, 2, 3, 4, 5]] * 4), 9, temperature=0.5, top_k=5, seed=1)
    sampler.sample(np.array([[2, 3]] * 2), 1, top_p=0.9, seed=2)
    sampler.sample(np.array([[2, 3, 4]] * 2), 7, top_k=80, seed=2)
    assert sampler.tracing_count == 2


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"top_k": 1}, {"top_k": 5, "temperature": 1.5}, {"top_k": 70},
                                     {"top_p": 0.9}, {"temperature": 0.3}])
def test_xla_loop_draws_the_same_tokens_as_the_growing_loop(options):
    model = _model(n_ctx=16)
    xla, growing = Sampler(model), Sampler(model, xla_max_batch=0)
    context = np.array([[1, 2, 3], [4, 5, 6]])
    expected = growing.sample(context, 40, seed=11, **options)  # 40 > n_ctx: the window slides too
    np.testing.assert_array_equal(xla.sample(context, 40, seed=11, **options), expected)
    np.testing.assert_array_equal(xla.sample(context, 40, seed=11, chunk=3, **options), expected)
    assert not np.array_equal(xla.sample(context, 40, seed=12, **options), expected) or options.get("top_k") == 1


@pytest.mark.slow
def test_draws_follow_the_softmax_distribution():
    logits = tf.math.log(tf.constant([[0.5, 0.25, 0.15, 0.07, 0.03]]))
    draws = np.array([int(_draw(logits, i, 1.0, 0, 0.0, tf.constant([[7, 0]], tf.int64))[0, 0])
                      for i in range(4000)])
    counts = np.bincount(draws, minlength=5)
    expected = 4000 * np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.5, (counts, chi2)  # p = 0.001 for 4 degrees of freedom


@pytest.mark.slow
def test_length_beyond_context_slides_the_window():
    model = _model(n_ctx=16)
    sampler = Sampler(model)
    out = sampler.sample(np.array([[1, 2, 3]]), 50, top_k=1, seed=0)
    assert out.shape == (1, 50)
    # The first tokens are ordinary greedy continuation within the context.
    expected = np.array([[1, 2, 3]])
    for _ in range(13):
        nxt = np.argmax(model(expected).numpy()[:, -1], axis=-1)[:, None]
        expected = np.concatenate([expected, nxt], axis=1)
    np.testing.assert_array_equal(out[:, :13], expected[:, 3:])


@pytest.mark.slow
def test_stop_ends_sampling_between_chunks():
    sampler = Sampler(_model())
    out = sampler.sample(np.array([[1]]), 30, seed=0, chunk=4, stop=lambda tokens: tokens.shape[1] >= 8)
    assert out.shape == (1, 8)


@settings(max_examples=150, deadline=None)
@given(
    logits=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 40)),
                      elements=st.floats(-1e4, 1e4, width=32)),
    temperature=st.floats(1e-3, 10.0),
    top_k=st.integers(0, 50),
    top_p=st.floats(0.0, 1.0),
)
def test_filters_never_give_nan_or_an_empty_distribution(logits, temperature, top_k, top_p):
    out = filter_logits(tf.constant(logits), temperature, top_k, top_p).numpy()
    # The XLA loop's variant (top-k of a constant size, or a sort) keeps the same tokens.
    np.testing.assert_array_equal(filter_logits(tf.constant(logits), temperature, top_k, top_p, sort=True).numpy(), out)
    assert not np.isnan(out).any()
    kept = out > -1e9
    assert kept.any(axis=-1).all()
    # The most likely token always survives, and probabilities are finite and sum to 1.
    assert kept[np.arange(len(logits)), logits.argmax(-1)].all()
    probs = tf.nn.softmax(out).numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-4)
    if top_k and not top_p:
        assert (kept.sum(-1) >= np.minimum(top_k, logits.shape[1])).all()


def test_repetition_penalty_is_the_ctrl_rule_and_1_is_exact():
    logits = tf.constant([[2.0, -2.0, 3.0, -1.0]])
    seen = tf.constant([[True, True, False, False]])
    np.testing.assert_allclose(penalize(logits, seen, 2.0).numpy(), [[1.0, -4.0, 3.0, -1.0]])
    np.testing.assert_array_equal(penalize(logits, seen, 1.0).numpy(), logits.numpy())


@pytest.mark.slow
def test_steering_never_retraces_and_both_loops_agree():
    model = _model(n_ctx=16)
    xla, growing = Sampler(model), Sampler(model, xla_max_batch=0)
    context = np.array([[1, 2, 3], [4, 5, 6]])
    plain = xla.sample(context, 30, seed=5)
    # Penalty 1.0 and no stop sequences draw exactly the tokens drawn without them.
    np.testing.assert_array_equal(xla.sample(context, 30, seed=5, repetition_penalty=1.0, stop_tokens=[]), plain)
    for options in ({"repetition_penalty": 1.3}, {"repetition_penalty": 0.7, "top_k": 5},
                    {"stop_tokens": [plain[0, 4:6], plain[1, 9:10]]}):
        expected = growing.sample(context, 30, seed=5, **options)
        np.testing.assert_array_equal(xla.sample(context, 30, seed=5, **options), expected)
        np.testing.assert_array_equal(xla.sample(context, 30, seed=5, chunk=4, **options), expected)
    assert xla.tracing_count == 2 and growing.tracing_count == 1


@pytest.mark.slow
def test_greedy_under_a_strong_penalty_never_repeats():
    sampler = Sampler(_model())
    context = np.array([[1, 2, 3]])
    greedy = sampler.sample(context, 20, top_k=1, seed=0)
    assert len(set(greedy[0].tolist())) < 20  # a random tiny model loops when greedy
    damped = sampler.sample(context, 20, top_k=1, seed=0, repetition_penalty=1e4)
    assert len(set(damped[0].tolist()) | {1, 2, 3}) == 23


@pytest.mark.slow
def test_stop_sequences_end_each_row_and_the_loop_once_all_rows_ended():
    sampler = Sampler(_model())
    context = np.array([[1, 2, 3], [4, 5, 6]])
    plain = sampler.sample(context, 30, seed=5)
    first = {0: plain[0, 4:6].tolist(), 1: plain[1, 9:10].tolist()}
    ends = [next(t + len(seq) for t in range(30) if plain[row, t:t + len(seq)].tolist() == seq)
            for row, seq in first.items()]
    out = sampler.sample(context, 30, seed=5, stop_tokens=list(first.values()))
    np.testing.assert_array_equal(out, plain[:, :max(ends)])  # the same draws, cut when both rows ended
    # Stop sequences spanning compiled calls still end the rows.
    np.testing.assert_array_equal(sampler.sample(context, 30, seed=5, chunk=5, stop_tokens=list(first.values())),
                                  plain[:, :max(ends)])
    # A per-row `stop` callback ends rows too: row 0 at once, row 1 after its stop sequence.
    out = sampler.sample(context, 30, seed=5, chunk=3, stop=lambda t: np.array([True, False]),
                         stop_tokens=[first[1]])
    assert out.shape[1] == ends[1]


def test_too_many_stop_sequences_is_an_error_naming_the_limit():
    with pytest.raises(ValueError, match="at most 8"):
        Sampler(_model()).sample(np.array([[1]]), 3, stop_tokens=[[i] for i in range(9)])


def test_cache_windows_are_multiples_of_128_up_to_the_context():
    from gpt2_simple.generation.decoding import cache_window

    assert [cache_window(p, 1024) for p in (1, 33, 128, 129, 288, 512, 513, 1000, 1024, 5000)] == \
        [128, 128, 128, 256, 384, 512, 640, 1024, 1024, 1024]
    assert [cache_window(p, 16) for p in (1, 16, 40)] == [16, 16, 16]
    assert [cache_window(p, 300) for p in (100, 200, 300)] == [128, 256, 300]


@pytest.mark.slow
def test_xla_loop_over_each_cache_window_draws_the_growing_loops_tokens():
    # n_ctx 512: windows of 128, 256, 384 and 512 positions, a call that slides, and chunks (one window per call).
    model = GPT2(HParams(n_vocab=97, n_ctx=512, n_embd=16, n_head=2, n_layer=2), seed=0)
    xla, growing = Sampler(model), Sampler(model, xla_max_batch=0)
    context = np.random.default_rng(0).integers(0, 97, size=(2, 100))
    for length in (20, 150, 250, 400, 700):
        expected = growing.sample(context, length, seed=5)
        np.testing.assert_array_equal(xla.sample(context, length, seed=5), expected)
    np.testing.assert_array_equal(xla.sample(context, 400, seed=5, chunk=90), growing.sample(context, 400, seed=5))
    assert xla.tracing_count == 2  # a new window compiles, but never retraces


def test_the_xla_loop_takes_the_transposed_block_matrices_once_per_call(monkeypatch):
    # A stream or a server request draws a few tokens per compiled call: transposing the block
    # matrices inside the compiled loop made a 4-token-chunked 124M call twice as slow as one call.
    from gpt2_simple.model import columns

    model = GPT2(HParams(n_vocab=97, n_ctx=64, n_embd=16, n_head=2, n_layer=2), seed=0)
    xla, growing = Sampler(model), Sampler(model, xla_max_batch=0)
    stored = {tuple(layer.w.shape) for b in model.h for layer in (b.attn.c_attn, b.mlp.c_fc, b.mlp.c_proj)}
    graph = xla._decode_fixed.get_concrete_function().graph
    assert [op.name for op in graph.get_operations() if op.type == "Transpose" and tuple(op.inputs[0].shape) in stored] == []
    made = []
    monkeypatch.setattr(columns, "block_matrices", lambda m, real=columns.block_matrices: made.append(1) or real(m))
    context = np.random.default_rng(0).integers(0, 97, size=(2, 5))
    np.testing.assert_array_equal(xla.sample(context, 13, seed=2, chunk=3), growing.sample(context, 13, seed=2))
    assert len(made) == 1  # one call, five compiled calls


def _strong_init(rng):
    """Weights 15x OpenAI's initial scale (LayerNorms as usual): each token depends strongly on its context and positions."""
    def init(name, shape):
        leaf = name.rsplit("/", 1)[-1]
        return np.full(shape, float(leaf == "g"), np.float32) if leaf in "gb" else rng.normal(0, 0.3, shape).astype(np.float32)
    return init


MIXED = [  # one row each: a prompt length, options and (seed, stream row)
    (1, dict(temperature=0.9), (11, 0)),
    (9, dict(temperature=0.7, top_k=5), (4, 2)),
    (3, dict(temperature=1.0, top_p=0.8, repetition_penalty=1.3), (11, 1)),
    (20, dict(temperature=1.2, min_p=0.05, presence_penalty=0.5, frequency_penalty=0.4), (9, 0)),
    (5, dict(temperature=0.8, logit_bias={3: 6.0}, stop_tokens=[[3, 3]]), (2, 5)),
]


@pytest.mark.parametrize("xla_max_batch", [8, 0], ids=["xla", "growing"])
def test_each_row_of_a_mixed_batch_draws_what_it_draws_alone(xla_max_batch):
    # Prompts of five lengths (left-padded), five sets of options and five seeds in one batch. A batch's
    # logits differ from a lone row's in the last bits (matrix kernels sum in another order), so
    # only two noisy logits within ~1e-6 of each other could draw differently; with fixed seeds
    # this test is deterministic. It fails without the padding mask or the per-row positions.
    rng = np.random.default_rng(0)
    sampler = Sampler(GPT2(HParams(n_vocab=97, n_ctx=64, n_embd=16, n_head=2, n_layer=2), init=_strong_init(rng)),
                      xla_max_batch=xla_max_batch)
    prompts = [rng.integers(0, 97, size=n).tolist() for n, _, _ in MIXED]
    options = [SamplingOptions.make(**o) for _, o, _ in MIXED]
    mixed = sampler.sample(prompts, 30, seed=[s for _, _, s in MIXED], options=options, chunk=7)
    assert mixed.shape == (5, 30)  # a row that stops does not end the others
    for row, prompt, opts, (seed, stream) in zip(mixed, prompts, options, (s for _, _, s in MIXED)):
        alone = sampler.sample([prompt] * (stream + 1), 30, seed=seed, options=opts, chunk=7)[stream]
        np.testing.assert_array_equal(row[:len(alone)], alone)  # alone, a call ends once all its rows have stopped
    stopped = [i for i, t in enumerate(mixed[4]) if i and t == mixed[4][i - 1] == 3]  # the last row's stop sequence
    assert stopped, "the stop sequence never came: the row's logit_bias was not applied"
    assert sampler.sample(prompts, 100, seed=1, options=options).shape == (5, 100)  # slides past n_ctx


def test_rows_that_join_a_running_call_draw_what_they_draw_alone():
    # Continuous batching: between chunks of the fixed-window loop, rows join a call into a grown
    # batch or the slot of a row that has ended, with prompts longer than the call's position (every
    # row then moves right), their own options and seeds. Each draws what it draws alone; without the
    # per-row draw index, the shift or the slot's cleared history, a joined row draws other tokens.
    rng = np.random.default_rng(1)
    sampler = Sampler(GPT2(HParams(n_vocab=97, n_ctx=64, n_embd=16, n_head=2, n_layer=2), init=_strong_init(rng)),
                      xla_max_batch=8)

    def row(n, length, seed, **options):
        return Joining(rng.integers(0, 97, size=n).tolist(), SamplingOptions.make(**options), seed, length)

    first = row(4, 12, (5, 0), temperature=0.9)
    late = [row(2, 10, (3, 1), temperature=0.7, top_k=5),  # joins a grown batch
            row(9, 20, (8, 0), repetition_penalty=1.3, presence_penalty=0.4),  # longer than the position: a shift
            row(5, 12, (1, 0), repetition_penalty=3.0, frequency_penalty=4.0, stop_tokens=[[7, 7]])]  # into A's slot
    too_long = row(60, 10, (2, 0))  # would outgrow the context: refused by `fits`
    owner, asked = {0: first}, []

    def join(slots, fits):
        asked.append(list(slots))
        assert not fits([too_long])
        wanted = late[:2] if len(asked) == 1 else late[2:] if 0 in slots and owner[0] is first else []
        assert fits(wanted)
        owner.update(zip(slots, wanted))
        return wanted

    def stop(out):  # A ends after 6 tokens; its slot is then free
        return [owner[0] is first and out.shape[1] >= 6] + [False] * (len(out) - 1)

    drawn = {id(r): [] for r in [first] + late}
    for tokens in sampler.chunks([first.tokens], first.length, seed=np.array([first.seed]), chunk=3, stop=stop,
                                 options=first.options, join=join):
        for slot, r in list(owner.items()):
            drawn[id(r)] += tokens[slot].tolist()
    assert asked[0] == list(range(1, 8)) and any(0 in slots for slots in asked[1:])
    for r in [first] + late:
        alone = sampler.sample([r.tokens], r.length, seed=np.array([r.seed]), options=r.options)[0]
        n = 6 if r is first else len(alone)  # alone, a row that draws its stop sequence ends the call
        np.testing.assert_array_equal(drawn[id(r)][:n], alone[:n])


def test_a_row_placed_in_an_ended_slot_starts_clean():
    # The slot's last row drew tokens: the new row's text, draws, penalties' sets and stop tail are its own.
    state = Decoding(history=np.array([[4, 5, 6], [NO_TOKEN, 8, 9]], np.int32), pending=np.array([[6], [9]], np.int32),
                     caches=None, out=np.array([[5, 6], [8, 9]], np.int32), ended=np.array([True, False]),
                     seeds=np.zeros([2, 2], np.int64), options=[SamplingOptions.make()] * 2, until=np.array([2, 4]),
                     start=2)
    state.pads = np.array([0, 1], np.int32)
    place(state, 0, Joining([7, 3], SamplingOptions.make(top_k=2), (9, 1), 3))
    assert state.history[0].tolist() == [NO_TOKEN, 7, 3] and state.pending[0].tolist() == [3] and state.pads[0] == 1
    assert state.seen(10)[0].nonzero()[0].tolist() == [3, 7] and state.counts(10)[0].sum() == 0
    assert state.recent()[0].tolist() == [NO_TOKEN] * len(state.recent()[0])
    assert state.index().tolist() == [0, 2] and state.seeds[0].tolist() == [9, 1] and state.until.tolist() == [5, 4]
    assert not state.ended[0] and state.options[0].top_k == 2 and state.left() == 3
