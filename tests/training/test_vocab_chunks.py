"""The chunked cross-entropy equals the plain one: the loss and every gradient, full and LoRA, 32 and 16 bits."""
import numpy as np
import pytest
import tensorflow as tf

from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2
from gpt2_simple.training.step import PRECISIONS, lm_loss
from gpt2_simple.training.vocab_chunks import chunked_lm_loss


def _loss_and_grads(model, tokens, variables, **kwargs):
    @tf.function
    def run():
        with tf.GradientTape() as tape:
            loss = lm_loss(model, tokens, **kwargs)
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    loss, grads = run()
    return float(loss), [g.numpy() for g in grads]


@pytest.mark.parametrize("chunk", [10, 97, 500])  # 97 = 9 * 10 + 7: the last chunk overlaps; one chunk; wider
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_the_chunked_loss_and_gradients_equal_the_plain_ones(tiny_hparams, chunk, precision, monkeypatch):
    from gpt2_simple.training import vocab_chunks

    monkeypatch.setattr(vocab_chunks, "CHUNK", chunk)
    model = GPT2(HParams(**tiny_hparams), seed=0)
    tokens = tf.constant(np.random.default_rng(0).integers(0, 97, size=(2, 12)), tf.int32)
    variables = [model.weights[n] for n in sorted(model.weights)]
    dtype = PRECISIONS[precision]
    plain, plain_grads = _loss_and_grads(model, tokens, variables, dtype=dtype, chunked=False)
    loss, grads = _loss_and_grads(model, tokens, variables, dtype=dtype, chunked=True)
    assert loss == pytest.approx(plain, rel=1e-5)
    # bfloat16: the chunks sum the gradient in another order, a few of bfloat16's 8-bit steps apart
    rtol, atol = (1e-4, 1e-6) if precision == "float32" else (3e-2, 1e-2)
    for name, g, p in zip(sorted(model.weights), grads, plain_grads):
        np.testing.assert_allclose(g, p, rtol=rtol, atol=atol, err_msg=name)
    assert np.abs(grads[sorted(model.weights).index("model/wte")]).sum() > 0


def test_recomputation_uses_it_and_a_lora_step_over_a_bfloat16_base_matches(tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=0).enable_lora(4, base_precision="bfloat16", seed=0)
    for name, var in model.lora_weights.items():  # B = 0 at the start: give it values so A's gradient is not 0
        if name.endswith("lora_B"):
            var.assign(np.random.default_rng(1).normal(0, 0.1, var.shape))
    tokens = tf.constant(np.random.default_rng(0).integers(0, 97, size=(1, 16)), tf.int32)
    names = sorted(model.lora_weights)
    variables = [model.lora_weights[n] for n in names]
    plain, plain_grads = _loss_and_grads(model, tokens, variables, recompute=True, chunked=False)
    loss, grads = _loss_and_grads(model, tokens, variables, recompute=True)  # the default with recompute
    assert loss == pytest.approx(plain, rel=1e-5)
    for name, g, p in zip(names, grads, plain_grads):
        np.testing.assert_allclose(g, p, rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_direct_call_equals_the_softmax_cross_entropy():
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(2, 5, 8)), tf.float32)
    wte = tf.constant(rng.normal(size=(23, 8)), tf.float32)
    tokens = tf.constant(rng.integers(0, 23, size=(2, 5)), tf.int32)
    logits = tf.einsum("bse,ve->bsv", features, wte)
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tokens[:, 1:], logits[:, :-1]))
    assert float(chunked_lm_loss(features, wte, tokens, chunk=6)) == pytest.approx(float(expected), rel=1e-6)
