"""The copy index: planted training spans are found at their offset and line, fresh text is not."""
import os
import re

import numpy as np
import pytest

from gpt2_simple.generation.copies import SPAN, CopyIndex, span_keys

NEWLINE = 10  # in these tests token 10 is a newline


@pytest.fixture(scope="module")
def training():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5000, 200_000).astype(np.uint16)
    tokens[rng.integers(0, len(tokens), 20_000)] = NEWLINE
    newlines = np.zeros(5000, np.int64)
    newlines[NEWLINE] = 1
    return tokens, CopyIndex(tokens, newlines=newlines)


def test_planted_span_is_found_at_its_offset_and_line(training):
    tokens, index = training
    rng = np.random.default_rng(1)
    offset = 123_457
    sample = np.concatenate([rng.integers(5000, 6000, 10), tokens[offset:offset + 30], rng.integers(5000, 6000, 12)])
    copy = index.check(sample)
    assert (copy.longest, copy.start, copy.offset, copy.tokens) == (30, 10, offset, 52)
    assert copy.line == 1 + int((tokens[:offset] == NEWLINE).sum())
    assert copy.share == pytest.approx((30 - SPAN + 1) / (52 - SPAN + 1))
    assert copy.mark() == f"copied: 30 of 52 tokens from line {copy.line}"


def test_fresh_and_unrelated_texts_are_not_flagged(training):
    tokens, index = training
    fresh = np.random.default_rng(2).integers(0, 5000, 300)  # the training data's vocabulary, new order
    assert (index.check(fresh).longest, index.check(fresh).share) == (0, 0.0)
    unrelated = np.arange(6000, 6400)
    copy = index.check(unrelated)
    assert (copy.longest, copy.share, copy.offset) == (0, 0.0, -1)
    assert copy.mark() == "new: no 8-token span of the training data"
    assert index.check(tokens[:5]).longest == 0  # shorter than a span


def test_a_span_of_seven_is_not_a_copy_and_eight_is(training):
    tokens, index = training
    assert index.check(np.r_[[5999], tokens[500:507], [5999]]).longest == 0
    assert index.check(np.r_[[5999], tokens[500:508], [5999]]).longest == 8


def test_documents_runs_give_the_document(training):
    eot = 4999
    stream = np.array([eot, 1, 2, 3, eot] + list(range(100, 120)) + [eot, 7, 8], np.int64)
    index = CopyIndex(stream, separator=eot)
    copy = index.check(np.arange(103, 115))
    assert (copy.longest, copy.offset, copy.where, copy.line) == (12, 8, "document", 2)
    assert copy.mark() == "copied: 12 of 12 tokens from document 2"


def test_keys_are_positional():
    assert span_keys(np.arange(9)).tolist() != span_keys(np.arange(9)[::-1]).tolist()
    assert len(set(span_keys(np.arange(1000)).tolist())) == 993


@pytest.fixture(scope="module")
def run_session(memorized_run):
    import gpt2_simple as gpt2

    root, model_dir, checkpoint_dir, data = memorized_run
    return gpt2.load_gpt2(gpt2.start_tf_sess(), checkpoint_dir=checkpoint_dir), data


@pytest.mark.slow
def test_generate_marks_copies_of_a_memorized_run(run_session):
    import gpt2_simple as gpt2
    from runs import TEXT

    sess, data = run_session
    texts = gpt2.generate(sess, return_as_list=True, nsamples=4, batch_size=4, length=24, seed=0, temperature=0.1,
                          check_copies=True)
    index = sess.copy_index()
    assert index.tokens.tolist()[:1040] == sess.encoder.encode(TEXT)  # then training's literal <|endoftext|>
    for text in texts:  # the run repeats its 3-line text: every sample copies it from one of the lines
        copy = text.copy
        assert copy == index.check(sess.encoder.encode(text)) and copy.longest >= 12, text
        body = sess.encoder.encode(text)[copy.start:copy.start + copy.longest]
        assert list(index.tokens[copy.offset:copy.offset + copy.longest]) == body
        assert copy.line == 1 + TEXT[:len(sess.encoder.decode(list(index.tokens[:copy.offset])))].count("\n")
        assert copy.mark() == f"copied: {copy.longest} of {copy.tokens} tokens from line {copy.line}"
    kept = gpt2.generate(sess, return_as_list=True, nsamples=4, batch_size=4, length=24, seed=0, temperature=0.1,
                         copy_threshold=12)
    assert kept == []


@pytest.mark.slow
def test_generate_command_prints_the_mark(run_session, capsys):
    from gpt2_simple import cli

    sess, data = run_session
    code = cli.main(["generate", "--checkpoint_dir", os.path.dirname(sess.folder), "--stdout", "--length", "24",
                     "--seed", "0", "--check_copies", "--temperature", "0.1"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^\[copied: \d+ of \d+ tokens from line \d+\]$", out, re.M), out
    code = cli.main(["generate", "--checkpoint_dir", os.path.dirname(sess.folder), "--stdout", "--length", "24",
                     "--seed", "0", "--copy_threshold", "4"])
    assert code == 2 and "--copy_threshold 4 must be a number of tokens >= 8" in capsys.readouterr().err
    code = cli.main(["generate", "--checkpoint_dir", os.path.dirname(sess.folder), "--stdout", "--length", "30",
                     "--seed", "0", "--check_copies", "--temperature", "0.1", "--avoid_copies", "10"])
    marks = re.findall(r"^\[(?:copied: (\d+) of \d+ tokens from line \d+|new: .*)\]$", capsys.readouterr().out, re.M)
    assert code == 0 and len(marks) == 1 and int(marks[0] or 0) <= 10, marks
    code = cli.main(["generate", "--checkpoint_dir", os.path.dirname(sess.folder), "--stdout", "--avoid_copies", "65"])
    assert code == 2 and "--avoid_copies 65 must be a number of tokens from 1 to 64" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_stream_marks_its_last_piece(run_session):
    import gpt2_simple as gpt2
    from gpt2_simple.generation.copies import MarkedText

    sess, data = run_session
    kwargs = dict(length=24, seed=0, temperature=0.1, check_copies=True)
    pieces = list(gpt2.generate_stream(sess, **kwargs))
    whole = gpt2.generate(sess, return_as_list=True, **kwargs)[0]
    assert "".join(pieces) == whole and len(pieces) > 1
    assert isinstance(pieces[-1], MarkedText) and pieces[-1].copy == whole.copy and whole.copy.longest >= 12
    assert not any(isinstance(p, MarkedText) for p in pieces[:-1])
    plain = list(gpt2.generate_stream(sess, length=24, seed=0, temperature=0.1))
    assert plain == pieces and not isinstance(plain[-1], MarkedText)


@pytest.mark.slow
def test_generate_command_streams_the_mark(run_session, capsys):
    import gpt2_simple as gpt2
    from gpt2_simple import cli

    sess, data = run_session
    flags = ["generate", "--checkpoint_dir", os.path.dirname(sess.folder), "--length", "24", "--seed", "0",
             "--temperature", "0.1", "--stream"]
    assert cli.main(flags + ["--check_copies"]) == 0
    out = capsys.readouterr().out
    whole = gpt2.generate(sess, return_as_list=True, length=24, seed=0, temperature=0.1, check_copies=True)[0]
    assert out == f"{whole}\n[{whole.copy.mark()}]\n" and whole.copy.longest >= 12  # the text only, then its mark
    assert cli.main(flags + ["--copy_threshold", "12"]) == 2
    assert "--copy_threshold 12 cannot drop a streamed text" in capsys.readouterr().err
