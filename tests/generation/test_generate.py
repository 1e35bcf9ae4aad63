"""generate / load_gpt2 / generate_to_file: every option, reproducibility, no retrace, errors."""
import os

import numpy as np
import pytest
from serving import tiny_session
from runs import make_tiny_model

import gpt2_simple as gpt2


@pytest.fixture(scope="module")
def sess(tmp_path_factory, real_vocab_dir):
    return tiny_session(tmp_path_factory.mktemp("gen"), real_vocab_dir, seed=3)


def test_load_gpt2_prints_and_returns_the_session(tmp_path, real_vocab_dir, capsys):
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    sess = gpt2.start_tf_sess()
    assert gpt2.load_gpt2(sess, model_name="tiny", model_dir=model_dir) is sess
    assert capsys.readouterr().out == f"Loading pretrained model {os.path.join(model_dir, 'tiny', 'model.ckpt')}\n"
    assert sess.model.hparams.n_ctx == 32


@pytest.mark.slow
def test_seeded_texts_are_reproducible_and_batched(sess):
    a = gpt2.generate(sess, nsamples=4, batch_size=2, length=12, seed=42, return_as_list=True)
    assert len(a) == 4 and all(isinstance(t, str) for t in a)
    assert a == gpt2.generate(sess, nsamples=4, batch_size=2, length=12, seed=42, return_as_list=True)
    assert a != gpt2.generate(sess, nsamples=4, batch_size=2, length=12, seed=43, return_as_list=True)
    assert len(set(a)) > 1  # rows of a batch differ


def test_greedy_text_is_the_argmax_continuation(sess):
    enc, model = sess.encoder, sess.model
    prefix = "Hello there"
    tokens = enc.encode(prefix)
    text = gpt2.generate(sess, prefix=prefix, length=6, top_k=1, return_as_list=True)[0]
    expected = np.array([tokens])
    for _ in range(6):
        expected = np.concatenate([expected, [[int(np.argmax(model(expected).numpy()[0, -1]))]]], axis=1)
    assert text == enc.decode(expected[0]).lstrip("\n")
    assert text.startswith(prefix)


def test_prefix_include_prefix_and_truncate(sess):
    enc = sess.encoder
    with_prefix = gpt2.generate(sess, prefix="Once upon", length=10, seed=1, return_as_list=True)[0]
    without = gpt2.generate(sess, prefix="Once upon", length=10, seed=1, include_prefix=False, return_as_list=True)[0]
    assert with_prefix.startswith("Once upon")
    assert without == with_prefix[len("Once upon"):].lstrip("\n")
    full = gpt2.generate(sess, length=20, seed=3, top_k=5, return_as_list=True)[0]
    marker = full[5:8]
    cut = gpt2.generate(sess, length=20, seed=3, top_k=5, truncate=marker, return_as_list=True)[0]
    assert cut == full[: full.index(marker)].lstrip("\n")
    assert enc.decode(enc.encode(cut)) == cut


def test_truncate_stops_sampling_early(sess, monkeypatch):
    calls = []
    original = sess.sampler.sample

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.shape[1])
        return out

    monkeypatch.setattr(sess.sampler, "sample", counting)
    texts = gpt2.generate(sess, length=600, seed=0, truncate="e", nsamples=2, batch_size=2, return_as_list=True)
    assert calls == [32]  # every text contained "e" after the first chunk (n_ctx=32 tokens)
    assert all("e" not in t for t in texts)


def test_length_beyond_the_context(sess):
    text = gpt2.generate(sess, length=100, seed=0, top_k=1, return_as_list=True)[0]
    assert len(sess.encoder.encode(text)) >= 80  # n_ctx is 32


def test_output_to_stdout_and_files(sess, tmp_path, capsys):
    gpt2.generate(sess, length=5, seed=0, nsamples=2, batch_size=1)
    out = capsys.readouterr().out
    assert out.count("=" * 20 + "\n") == 2
    texts = gpt2.generate(sess, length=5, seed=0, nsamples=2, batch_size=1, return_as_list=True)
    assert out == "".join(f"{t}\n{'=' * 20}\n" for t in texts)
    path = tmp_path / "out.txt"
    gpt2.generate_to_file(sess, destination_path=str(path), length=5, seed=0, nsamples=2, sample_delim="--\n")
    assert path.read_text(encoding="utf-8") == "".join(f"{t}\n--\n" for t in texts)
    gpt2.generate(sess, length=5, seed=0)
    assert capsys.readouterr().out.endswith("\n") and "=" * 20 not in capsys.readouterr().out  # nsamples=1: no delim


def test_sampler_compiled_once_across_calls(sess):
    gpt2.generate(sess, length=5, seed=0, return_as_list=True)
    sampler = sess.sampler
    for kwargs in (dict(prefix="A longer prompt than before", length=12), dict(nsamples=3, batch_size=3, length=7),
                   dict(top_p=0.9, temperature=1.3, length=4), dict(top_k=3, length=40)):
        gpt2.generate(sess, seed=1, return_as_list=True, **kwargs)
    assert sess.sampler is sampler and sampler.tracing_count == 2  # the prompt loop and the XLA loop


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(nsamples=3, batch_size=2), "nsamples=3 is not divisible by batch_size=2"),
        (dict(temperature=0), "temperature=0 must be > 0"),
        (dict(top_k=-1), "top_k=-1 must be an integer >= 0"),
        (dict(top_p=1.5), "top_p=1.5 must be in [0, 1]"),
        (dict(length=0), "length=0 must be a positive number of tokens"),
        (dict(batch_size=0), "batch_size=0 must be a positive integer"),
        (dict(prefix="word " * 40), "the model's context is n_ctx=32"),
    ],
)
def test_bad_options_are_one_line_errors(sess, kwargs, message):
    with pytest.raises(ValueError) as info:
        gpt2.generate(sess, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_generate_without_a_model_says_what_to_do():
    with pytest.raises(ValueError, match="no model is loaded in this session; call gpt2.load_gpt2"):
        gpt2.generate(gpt2.start_tf_sess())
