"""Streaming and steering: pieces that join into generate's text, UTF-8 held back, stop strings, penalty."""
import pytest
from serving import tiny_session

import gpt2_simple as gpt2
from encoder import get_encoder
from gpt2_simple.generation.stop_strings import StopStrings
from gpt2_simple.generation.call import TextStream

MIXED = "Émoji 😀🤖 and 漢字かな 한국어 — ok\n\nnext"


@pytest.fixture(scope="module")
def sess(tmp_path_factory, real_vocab_dir):
    return tiny_session(tmp_path_factory.mktemp("stream"), real_vocab_dir, seed=5)


def test_pieces_never_split_a_character_and_join_into_the_text(real_vocab_dir):
    enc = get_encoder(real_vocab_dir)
    tokens = enc.encode(MIXED)
    split = [t for t in tokens if enc.decode([t]) == "\ufffd"]
    assert len(split) >= 4  # byte-level BPE really does split these characters across tokens
    stream = TextStream(enc, [enc.eot_token])
    pieces = [stream.feed([t]) for t in tokens] + [stream.finish()]
    assert "".join(pieces) == MIXED == enc.decode(tokens)
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # it streamed, not one piece at the end


def test_stop_strings_are_held_back_then_cut(real_vocab_dir):
    enc = get_encoder(real_vocab_dir)
    stream = TextStream(enc, [enc.eot_token], stops=StopStrings(["漢字", "\n\n"]))
    pieces = []
    for t in enc.encode("Émoji 😀🤖 and 漢字 after"):
        pieces.append(stream.feed([t]))
        assert not stream.text.endswith("漢")  # could begin a stop string: not shown yet
    assert "".join(pieces) == "Émoji 😀🤖 and " and stream.ended
    assert stream.feed(enc.encode("more")) == "" and stream.finish() == ""


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [
    {}, {"prefix": "Hello 世界 😀"}, {"prefix": "Hello", "include_prefix": False}, {"top_k": 40},
    {"repetition_penalty": 1.5}, {"stop": [" the", "\n"]}, {"truncate": "e", "prefix": "\nAn"},
    {"presence_penalty": 1.0, "frequency_penalty": 0.5, "logit_bias": {262: 2.0}, "min_p": 0.05},
])
def test_generate_stream_joins_into_generates_text(sess, kwargs):
    pieces = list(gpt2.generate_stream(sess, length=60, seed=11, **kwargs))
    text = gpt2.generate(sess, length=60, seed=11, return_as_list=True, **kwargs)[0]
    assert "".join(pieces) == text
    assert all(pieces) and (len(pieces) > 3 or kwargs.get("stop") or kwargs.get("truncate"))


def test_stop_ends_each_text_at_its_first_stop_string(sess):
    full = gpt2.generate(sess, length=60, seed=3, nsamples=2, batch_size=2, return_as_list=True)
    stops = [full[0][10:13], full[1][20:22]]
    cut = gpt2.generate(sess, length=60, seed=3, nsamples=2, batch_size=2, stop=stops, return_as_list=True)
    for text, whole in zip(cut, full):
        at = min(i for i in (whole.find(s) for s in stops) if i >= 0)
        assert text == whole[:at]


def _chunk_sizes(sess, monkeypatch):
    """A list that gets the number of tokens of every chunk the session's sampler returns from now on."""
    sizes = []
    original = sess.sampler.chunks

    def recording(*args, **kwargs):
        for tokens in original(*args, **kwargs):
            sizes.append(tokens.shape[1])
            yield tokens

    monkeypatch.setattr(sess.sampler, "chunks", recording)
    return sizes


def test_stop_ends_sampling_early(sess, monkeypatch):
    drawn = _chunk_sizes(sess, monkeypatch)
    text = gpt2.generate(sess, length=600, seed=0, top_k=1, stop=" ", return_as_list=True)[0]
    assert " " not in text and sum(drawn) < 600


def test_penalty_changes_greedy_text_and_1_changes_nothing(sess):
    greedy = gpt2.generate(sess, length=40, seed=0, top_k=1, return_as_list=True)[0]
    assert gpt2.generate(sess, length=40, seed=0, top_k=1, repetition_penalty=1.0, return_as_list=True)[0] == greedy
    damped = gpt2.generate(sess, length=40, seed=0, top_k=1, repetition_penalty=50.0, return_as_list=True)[0]
    tokens = sess.encoder.encode(damped)
    assert damped != greedy and len(set(tokens)) >= len(tokens) - 2  # (re-encoding may merge a few)


def test_openai_adjustments_change_greedy_text_and_neutral_values_change_nothing(sess):
    greedy = gpt2.generate(sess, length=40, seed=0, top_k=1, return_as_list=True)[0]
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "min_p": 0.0}
    assert gpt2.generate(sess, length=40, seed=0, top_k=1, return_as_list=True, **neutral)[0] == greedy
    forced = gpt2.generate(sess, length=5, seed=0, top_k=1, logit_bias={262: 100}, return_as_list=True)[0]
    assert sess.encoder.encode(forced)[-5:] == [262] * 5  # " the"
    damped = gpt2.generate(sess, length=40, seed=0, top_k=1, frequency_penalty=100.0, return_as_list=True)[0]
    assert damped != greedy


def test_steering_never_retraces(sess):
    gpt2.generate(sess, length=5, seed=0, return_as_list=True)
    count = sess.sampler.tracing_count
    for kwargs in ({"stop": "a"}, {"stop": ["b", "\n", "xyz"]}, {"repetition_penalty": 1.3},
                   {"repetition_penalty": 0.8, "stop": "q"}):
        gpt2.generate(sess, length=20, seed=1, return_as_list=True, **kwargs)
        list(gpt2.generate_stream(sess, length=20, seed=1, **kwargs))
    assert sess.sampler.tracing_count == count == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"stop": ""}, "stop='' must be a non-empty string"),
    ({"stop": [1]}, "must be a non-empty string or a list"),
    ({"stop": list("abcdefghi")}, "stop has 9 strings; at most 8"),
    ({"repetition_penalty": 0}, "repetition_penalty=0 must be a number > 0"),
    ({"min_p": 1.5}, "min_p=1.5 must be in [0, 1]"),
    ({"presence_penalty": float("nan")}, "presence_penalty=nan must be a finite number"),
    ({"logit_bias": {50257: 1.0}}, "logit_bias has token id 50257"),
    ({"logit_bias": [1]}, "logit_bias=[1] must be a dict"),
    ({"nsamples": 2, "batch_size": 2}, "a stream is one sample"),
])
def test_bad_steering_is_a_one_line_error(sess, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        if "nsamples" in kwargs:
            next(gpt2.generate_stream(sess, **kwargs))
        gpt2.generate(sess, length=3, **kwargs)
    with pytest.raises(ValueError):
        next(gpt2.generate_stream(sess, length=3, **kwargs))


def test_first_piece_needs_one_prompt_pass(sess, monkeypatch):
    calls = _chunk_sizes(sess, monkeypatch)
    stream = gpt2.generate_stream(sess, prefix="Hello there", length=50, seed=2, include_prefix=False)
    first = next(stream)
    assert first and calls == [1]  # one compiled call: the prompt's forward pass and one draw
    assert list(stream) and len(calls) > 1 and sum(calls) == 50
