"""GPT-2's math: parameter counts, causality, the key/value cache, logits against NumPy."""
import numpy as np
import pytest
import tensorflow as tf
from reference import gpt2_logits

from gpt2_simple.formats.checkpoint import openai_variables
from gpt2_simple.model.hparams import PRESETS, HParams
from gpt2_simple.model.model import GPT2


def test_124m_parameter_count_and_table():
    hparams = PRESETS["124M"]
    table = openai_variables(hparams)
    assert len(table) == 148
    assert sum(int(np.prod(shape)) for _, shape in table) == 124_439_808 == hparams.n_params
    assert table[0] == ("model/wte", (50257, 768))
    assert ("model/h11/attn/c_attn/w", (1, 768, 2304)) in table
    assert table[-1] == ("model/ln_f/b", (768,))
    assert [PRESETS[n].n_params for n in ("355M", "774M", "1558M")] == [354_823_168, 774_030_080, 1_557_611_200]


def test_model_registers_exactly_the_table(tiny_hparams):
    hparams = HParams(**tiny_hparams)
    model = GPT2(hparams, seed=0)
    table = openai_variables(hparams)
    assert list(model.weights) == [name for name, _ in table]
    for name, shape in table:
        assert int(np.prod(model.weights[name].shape)) == int(np.prod(shape)), name
    assert len(model.trainable_variables) == len(table)


def test_logits_match_numpy_reference(tiny_hparams):
    from openai_layout import random_weights

    hparams = HParams(**tiny_hparams)
    weights = random_weights(tiny_hparams, seed=1)
    model = GPT2(hparams, init=lambda name, shape: weights[name].reshape(shape))
    tokens = np.random.default_rng(0).integers(0, hparams.n_vocab, size=(3, hparams.n_ctx))
    logits = model(tokens)
    assert logits.dtype == tf.float32 and logits.shape == (3, hparams.n_ctx, hparams.n_vocab)
    expected = gpt2_logits(weights, tokens, hparams.n_head)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_causal_future_tokens_do_not_change_past_logits(tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    tokens = np.arange(20)[None] % 97
    changed = tokens.copy()
    changed[0, 12] = 5
    a, b = model(tokens).numpy(), model(changed).numpy()
    np.testing.assert_array_equal(a[:, :12], b[:, :12])
    assert np.abs(a[:, 12:] - b[:, 12:]).max() > 1e-3


def test_cached_decoding_equals_full_forward(tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    tokens = tf.constant(np.random.default_rng(2).integers(0, 97, size=(2, 24)), tf.int32)
    full, keys_full, values_full = model.forward(tokens)
    # A prompt of 10 tokens, then one token at a time through the growing caches.
    logits, keys, values = model.forward(tokens[:, :10])
    steps = [logits]
    for t in range(10, 24):
        logits, keys, values = model.forward(tokens[:, t:t + 1], keys, values)
        steps.append(logits)
    np.testing.assert_allclose(tf.concat(steps, axis=1).numpy(), full.numpy(), rtol=1e-5, atol=1e-5)
    assert keys[1].shape == values[0].shape == (2 * 2, 24, 8)  # [batch * n_head, seq, head_dim]
    for ours, theirs in zip(keys + values, keys_full + values_full):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_accepts_numpy_and_tensors_of_any_int_dtype(tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    tokens = np.array([[1, 2, 3]])
    a = model(tokens).numpy()
    np.testing.assert_array_equal(a, model(tf.constant(tokens, tf.int64)).numpy())
    np.testing.assert_array_equal(a, model(tokens.astype(np.int32)).numpy())


@pytest.mark.parametrize(
    "tokens, message",
    [
        (np.array([1, 2, 3]), "must be int [batch, seq]"),
        (np.array([[0.5, 1.0]]), "integer token ids"),
        (np.zeros((1, 33), int), "n_ctx=32"),
        (np.array([[1, 97]]), "n_vocab=97"),
        (np.array([[-1, 2]]), "n_vocab=97"),
    ],
)
def test_bad_tokens_get_one_line_errors(tiny_hparams, tokens, message):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    with pytest.raises(ValueError, match=None) as info:
        model(tokens)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_hparams_validation():
    with pytest.raises(ValueError, match="n_embd=10 is not divisible by n_head=3"):
        HParams(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="n_layer=0"):
        HParams(n_layer=0)
    with pytest.raises(ValueError, match="missing keys \\['n_layer'\\]"):
        HParams.from_dict({"n_vocab": 1, "n_ctx": 1, "n_embd": 1, "n_head": 1})


def test_caches_of_a_fixed_window_written_in_place_equal_growing_ones(tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    tokens = tf.constant(np.random.default_rng(3).integers(0, 97, size=(2, 12)), tf.int32)
    full, keys_full, _ = model.forward(tokens)
    logits, keys, values = model.forward(tokens[:, :7])
    window = [tf.pad(c, [[0, 0], [0, 16 - 7], [0, 0]]) for c in keys], [tf.pad(c, [[0, 0], [0, 16 - 7], [0, 0]])
                                                                         for c in values]
    step = tf.function(model.forward, jit_compile=True)  # the in-place write is XLA's
    steps = [logits]
    keys, values = window
    for t in range(7, 12):
        logits, keys, values = step(tokens[:, t:t + 1], keys, values, tf.constant(t))
        steps.append(logits)
    np.testing.assert_allclose(tf.concat(steps, 1).numpy(), full.numpy(), rtol=1e-5, atol=1e-5)
    assert keys[1].shape == (2 * 2, 16, 8)
    np.testing.assert_allclose(keys[1][:, :12].numpy(), keys_full[1].numpy(), rtol=1e-5, atol=1e-5)
    assert not keys[1][:, 12:].numpy().any()  # positions after the last written stay zero

@pytest.mark.parametrize("pads", [None, [0, 2, 4]], ids=["unpadded", "left-padded"])
def test_the_column_step_equals_the_forward_pass(tiny_hparams, pads):
    from gpt2_simple.model import columns

    rng = np.random.default_rng(5)
    model = GPT2(HParams(**tiny_hparams), init=lambda name, shape: rng.normal(0, 0.3, shape).astype(np.float32))
    pads = None if pads is None else tf.constant(pads, tf.int32)
    tokens = tf.constant(rng.integers(0, 97, size=(3, 9)), tf.int32)
    _, keys, values = model.forward(tokens[:, :5], pads=pads)
    keys, values = ([tf.pad(c, [[0, 0], [0, 16 - 5], [0, 0]]) for c in caches] for caches in (keys, values))
    by_rows = tf.function(lambda *a: model.forward(*a, last_only=True), jit_compile=True)
    by_columns = tf.function(lambda *a: columns.step(model, columns.block_matrices(model), *a), jit_compile=True)
    spread = 0.0
    for t in range(5, 9):
        want = by_rows(tokens[:, t:t + 1], keys, values, tf.constant(t), pads)
        got = by_columns(tokens[:, t:t + 1], keys, values, tf.constant(t), pads)
        np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-5)
        for a, b in zip(got[1] + got[2], want[1] + want[2]):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        spread = max(spread, float(np.ptp(want[0].numpy())))
        keys, values = want[1], want[2]
    assert spread > 1  # logits far apart: a wrong transpose or mask shows by far more than atol
    assert columns.usable(model)
    model.enable_lora(2)
    assert not columns.usable(model)  # adapters decode by GPT2.forward


@pytest.mark.parametrize("xla", [False, True])
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_training_attention_recomputes_its_probabilities_with_autodiff_s_gradients(tiny_hparams, xla, dtype):
    """Training's attention (`keep=False`) has its own backward pass; its gradients are automatic
    differentiation's of the same forward pass, with packed segments and in 16 bits too."""
    from gpt2_simple.model.ops import attend

    rng = np.random.default_rng(0)
    q, k, v, d_out = (tf.constant(rng.normal(size=(4, 9, 8)), dtype) for _ in range(4))
    segments = tf.constant([[0] * 4 + [1] * 5, [0] * 9])

    def gradients(keep):
        @tf.function(jit_compile=xla)
        def run(q, k, v):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = attend(q, k, v, 0, None, 2, segments, keep=keep)
            return out, tape.gradient(out, [q, k, v], output_gradients=d_out)
        return run(q, k, v)

    (kept, kept_grads), (recomputed, recomputed_grads) = gradients(True), gradients(False)
    np.testing.assert_array_equal(recomputed.numpy(), kept.numpy())  # the same forward ops
    for mine, autodiff in zip(recomputed_grads, kept_grads):
        autodiff = autodiff.numpy().astype(np.float32)
        scale = np.abs(autodiff).max()  # float order differs: 1e-6 of it in float32, one bfloat16 rounding in 16 bits
        assert scale > 0.1
        np.testing.assert_allclose(mine.numpy().astype(np.float32), autodiff, rtol=0,
                                   atol=scale * (1e-6 if dtype == tf.float32 else 2**-7))


def test_xla_keeps_the_recomputed_softmax_and_tanh_apart_from_the_forward_ones(tiny_hparams):
    """XLA merges equal expressions: had it merged the backward pass's softmax (GELU's tanh) into the forward
    pass's, the probabilities (the tanh) would be kept after all. The compiled gradient has one exponential
    more a layer than automatic differentiation's, and two tanh a layer."""
    from gpt2_simple.model import model as model_module
    from gpt2_simple.training.step import lm_loss

    model = GPT2(HParams(**tiny_hparams), seed=0)
    tokens = tf.constant(np.random.default_rng(0).integers(0, tiny_hparams["n_vocab"], (1, 16)), tf.int32)

    def exponentials(keep):
        attend = model_module.attend
        model_module.attend = lambda *args, **kwargs: attend(*args, **dict(kwargs, keep=keep))
        try:
            @tf.function(jit_compile=True)
            def gradients(tokens):
                with tf.GradientTape() as tape:
                    loss = lm_loss(model, tokens)
                return tape.gradient(loss, list(model.weights.values()))
            hlo = gradients.experimental_get_compiler_ir(tokens)(stage="optimized_hlo")
        finally:
            model_module.attend = attend
        return hlo.count(" exponential("), hlo.count(" tanh(")

    (recomputed, tanh), (kept, _) = exponentials(False), exponentials(True)
    assert recomputed == kept + tiny_hparams["n_layer"] and tanh == 2 * tiny_hparams["n_layer"]


@pytest.mark.parametrize("xla", [False, True])
def test_gelu_s_own_gradient_is_the_formula_s_derivative(xla):
    from gpt2_simple.model.ops import gelu

    x = tf.constant(np.linspace(-6, 6, 1001), tf.float32)

    def plain(x):
        return 0.5 * x * (1.0 + tf.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))

    @tf.function(jit_compile=xla)
    def both(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            mine, theirs = gelu(x), plain(x)
        return mine, theirs, tape.gradient(mine, x), tape.gradient(theirs, x)

    mine, theirs, d_mine, d_theirs = both(x)
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    np.testing.assert_allclose(d_mine.numpy(), d_theirs.numpy(), rtol=0, atol=1e-6)  # |gelu'| <= 1.13 here
    assert d_mine.numpy().min() < -0.1 and d_mine.numpy().max() > 1.05  # the dip below 0 and the bump above 1


def test_the_training_loss_projects_only_the_positions_that_predict(tiny_hparams):
    """The last position predicts nothing: the compiled step's logits are `[seq - 1, n_vocab]`, the shape of their
    gradient, which XLA then writes over them (at 124M, 206 MB fewer at the step's peak). The loss is still the
    mean cross-entropy of the whole model's logits."""
    from gpt2_simple.training.step import lm_loss

    model = GPT2(HParams(**tiny_hparams), seed=0)
    seq, n_vocab = 16, tiny_hparams["n_vocab"]
    tokens = tf.constant(np.random.default_rng(0).integers(0, n_vocab, (1, seq)), tf.int32)

    @tf.function(jit_compile=True)
    def gradients(tokens):
        with tf.GradientTape() as tape:
            loss = lm_loss(model, tokens)
        return loss, tape.gradient(loss, list(model.weights.values()))

    hlo = gradients.experimental_get_compiler_ir(tokens)(stage="hlo")
    assert f"f32[1,{seq - 1},{n_vocab}]" in hlo and f"f32[1,{seq},{n_vocab}]" not in hlo
    logits = model(tokens).numpy()[0, :-1].astype(np.float64)
    top = logits.max(-1)
    expected = np.mean(top + np.log(np.exp(logits - top[:, None]).sum(-1)) - logits[np.arange(seq - 1), tokens[0, 1:]])
    np.testing.assert_allclose(gradients(tokens)[0].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("xla", [False, True])
def test_gelu_before_a_matrix_has_autodiff_s_gradients(xla):
    from gpt2_simple.model.ops import gelu_matmul

    x = tf.constant(np.linspace(-6, 6, 64 * 32).reshape(64, 32), tf.float32)
    w = tf.constant(np.random.default_rng(0).standard_normal((32, 8)), tf.float32)

    def plain(x):
        return 0.5 * x * (1.0 + tf.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))

    @tf.function(jit_compile=xla)
    def both(x, w):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, w])
            mine, theirs = gelu_matmul(x, w), tf.matmul(plain(x), w)
        return mine, theirs, tape.gradient(mine, [x, w]), tape.gradient(theirs, [x, w])

    mine, theirs, d_mine, d_theirs = both(x, w)
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for a, b in zip(d_mine, d_theirs):  # the derivatives differ by float32 ulps, summed over 8 or 64 terms
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6 * np.abs(b.numpy()).max())


def test_the_backward_pass_keeps_the_inputs_of_layernorm_and_gelu_not_their_outputs(tiny_hparams):
    """What the backward pass reads of the forward pass is what a step keeps. Where a matrix product follows
    LayerNorm or GELU, the backward pass recomputes their outputs from their inputs (`norm_matmul`,
    `gelu_matmul`): a layer keeps one tensor of the MLP's width (the first product's output), and three of
    the model's width (the block's input, attention's output and the residual between), where automatic
    differentiation kept two and nine. The final LayerNorm keeps autodiff's three."""
    from gpt2_simple.training.step import lm_loss

    model = GPT2(HParams(**tiny_hparams), seed=0)
    seq, n_embd, n_layer = 24, tiny_hparams["n_embd"], tiny_hparams["n_layer"]
    tokens = tf.constant(np.random.default_rng(0).integers(0, tiny_hparams["n_vocab"], (1, seq)), tf.int32)
    forward = set()

    @tf.function
    def gradients(tokens):
        with tf.GradientTape() as tape:
            loss = lm_loss(model, tokens)
        forward.update(tf.compat.v1.get_default_graph().get_operations())  # what exists before the backward pass
        return tape.gradient(loss, list(model.weights.values()))

    graph = gradients.get_concrete_function(tokens).graph
    kept = {t.ref() for op in graph.get_operations() if op not in forward for t in op.inputs if t.op in forward}
    shapes = [t.deref().shape.as_list() for t in kept]
    wide = [s for s in shapes if s[-1:] == [4 * n_embd] and seq in s]
    narrow = [s for s in shapes if s[-1:] == [n_embd] and seq in s]
    assert (len(wide), len(narrow)) == (n_layer, 3 * n_layer + 3), (wide, narrow)


@pytest.mark.parametrize("xla", [False, True])
def test_the_training_cross_entropy_equals_tensorflow_s(xla):
    """Loss and gradient, also where the logits span more than float32's exp can (a spread of 400)."""
    from gpt2_simple.training.step import cross_entropy

    rng = np.random.default_rng(0)
    logits = tf.constant(rng.standard_normal((2, 5, 97)) * np.array([1.0, 100.0])[:, None, None], tf.float32)
    labels = tf.constant(rng.integers(0, 97, (2, 5)), tf.int32)
    weights = tf.constant(rng.random((2, 5)), tf.float32)

    @tf.function(jit_compile=xla)
    def both(logits):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            mine = cross_entropy(logits, labels)
            theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            mine_sum, theirs_sum = tf.reduce_sum(mine * weights), tf.reduce_sum(theirs * weights)
        return mine, theirs, tape.gradient(mine_sum, logits), tape.gradient(theirs_sum, logits)

    mine, theirs, d_mine, d_theirs = both(logits)
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d_mine.numpy(), d_theirs.numpy(), rtol=0, atol=1e-7)  # |gradient| <= 1
    assert np.isfinite(mine.numpy()).all() and mine.numpy()[1].max() > 100


@pytest.mark.parametrize("xla", [False, True])
def test_layernorm_before_a_matrix_has_autodiff_s_gradients(xla):
    from gpt2_simple.model.ops import LAYER_NORM_EPSILON, norm_matmul

    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((64, 32)) * 3 + 1, tf.float32)
    g, b = tf.constant(rng.standard_normal(32), tf.float32), tf.constant(rng.standard_normal(32), tf.float32)
    w = tf.constant(rng.standard_normal((32, 8)), tf.float32)

    def plain(x, g, b):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) * g + b

    @tf.function(jit_compile=xla)
    def both(x, g, b, w):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, g, b, w])
            mine, theirs = norm_matmul(x, g, b, w), tf.matmul(plain(x, g, b), w)
        return mine, theirs, tape.gradient(mine, [x, g, b, w]), tape.gradient(theirs, [x, g, b, w])

    mine, theirs, d_mine, d_theirs = both(x, g, b, w)
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for a, b_ in zip(d_mine, d_theirs):  # the closed form sums in another order than the chain rule
        np.testing.assert_allclose(a.numpy(), b_.numpy(), rtol=0, atol=1e-5 * np.abs(b_.numpy()).max())
