"""The one XLA decision: GPT2_SIMPLE_XLA=0 and a device that cannot compile both fall back to the graph loops.

Forced off, training gives the XLA path's losses and decoding its tokens, with one printed line.
A refused compilation is a real one: XLA has no kernel for string ops, as a PluggableDevice GPU
has no XLA compiler at all.
"""
import re

import numpy as np
import pytest
import tensorflow as tf

from gpt2_simple import xla_choice
from gpt2_simple.generation.sample import XLA_MAX_BATCH, Sampler
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2
from gpt2_simple.training import step as step_module
from gpt2_simple.training.optimizer import make_optimizer


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No setting from the caller's environment, and no notice remembered from an earlier test."""
    monkeypatch.delenv(xla_choice.ENV, raising=False)
    monkeypatch.setattr(xla_choice, "_told", set())


def _must_compile(concrete):
    text = str(concrete.graph.as_graph_def())
    return re.search(r'key: "_XlaMustCompile"\s+value \{\s+b: true', text) is not None


def _train(tiny_hparams, batches):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    names = sorted(model.weights)
    # SGD: its losses after an update are linear in the gradients, which the two paths compute
    # equally up to summation order (Adam would lift that order in a near-zero gradient to a full step).
    opt = make_optimizer("sgd", {n: model.weights[n] for n in names}, 0.5)
    step = step_module.compile_train_step(model, opt, names, strategy=tf.distribute.get_strategy())
    return _must_compile(step.get_concrete_function(batches)), [float(step(batches)) for _ in range(3)]


@pytest.mark.slow
def test_forcing_xla_off_trains_the_same_losses_with_one_notice(tiny_hparams, monkeypatch, capsys):
    monkeypatch.setattr(step_module, "XLA_MIN_PARAMS", 0)  # the tiny model gets the real sizes' default on a GPU: XLA
    monkeypatch.setattr(step_module, "_on_gpu", lambda: True)
    batches = tf.constant(np.random.default_rng(0).integers(0, 97, size=(2, 2, 8)), tf.int32)
    compiled, xla_losses = _train(tiny_hparams, batches)
    assert compiled and capsys.readouterr().out == ""
    monkeypatch.setenv(xla_choice.ENV, "0")
    compiled, graph_losses = _train(tiny_hparams, batches)
    assert xla_choice.decide() is False  # asked again in the same process: no second notice
    assert not compiled
    assert capsys.readouterr().out == "XLA is off (GPT2_SIMPLE_XLA=0): training and decoding run TensorFlow's graph loops\n"
    assert xla_losses[2] < xla_losses[0]
    np.testing.assert_allclose(graph_losses, xla_losses, rtol=1e-5)


@pytest.mark.slow
def test_forcing_xla_off_decodes_the_same_tokens_with_one_notice(tiny_hparams, monkeypatch, capsys):
    model = GPT2(HParams(**tiny_hparams), seed=0)
    context = np.array([[1, 2, 3], [4, 5, 6]])
    xla = Sampler(model)
    assert xla.xla_max_batch == XLA_MAX_BATCH and capsys.readouterr().out == ""
    expected = xla.sample(context, 20, seed=3, top_k=5)
    monkeypatch.setenv(xla_choice.ENV, "off")
    graph = Sampler(model)
    assert graph.xla_max_batch == 0 and Sampler(model, xla_max_batch=4).xla_max_batch == 4  # an argument wins
    assert capsys.readouterr().out.count("XLA is off") == 1
    np.testing.assert_array_equal(graph.sample(context, 20, seed=3, top_k=5), expected)


def _refused(x):
    """A program XLA refuses: string formatting has no XLA kernel."""
    return tf.strings.length(tf.strings.as_string(x))


def test_a_device_that_cannot_compile_falls_back_with_one_line(tiny_hparams, monkeypatch, capsys):
    assert xla_choice.can_compile() == (True, None)
    ok, why = xla_choice.can_compile(_refused)
    assert not ok and why.startswith("InvalidArgumentError: Detected unsupported operations")
    monkeypatch.setattr(xla_choice, "probe_program", _refused)
    xla_choice.can_compile.cache_clear()
    try:
        assert xla_choice.decide(True) is False and xla_choice.decide() is False
        assert Sampler(GPT2(HParams(**tiny_hparams), seed=0)).xla_max_batch == 0
        assert xla_choice.decide(False) is False  # asked for no XLA: nothing to say
    finally:
        monkeypatch.undo()
        xla_choice.can_compile.cache_clear()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("XLA cannot compile on this device (InvalidArgumentError")


def test_a_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(xla_choice.ENV, "maybe")
    with pytest.raises(ValueError, match=r"^GPT2_SIMPLE_XLA='maybe' is not a setting; use GPT2_SIMPLE_XLA=0"):
        xla_choice.decide()
