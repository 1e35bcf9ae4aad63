"""Streaming: text pieces as tokens are drawn, which join into exactly the text `generate` returns.

This module owns `generate_stream`: one sample of a call prepared as `generate` prepares it
(`call.py`), drawn through `Sampler.chunks`, its text settled piece by piece by the call's
`TextStream` (which holds back what could still begin a stop string or split a character), with
the copy mark on the last piece when asked.
"""
import numpy as np

from .call import prepare
from .copies import MarkedText, SampleMarks
from .draws import batch_seed

# Tokens per compiled call while streaming (the first call draws one token after the prompt).
STREAM_CHUNK = 4


def generate_stream(sess, prefix=None, *, seed=None, length=1023, temperature=0.7, top_k=0, top_p=0.0,
                    truncate=None, include_prefix=True, stop=None, repetition_penalty=1.0, nsamples=1,
                    batch_size=1, check_copies=False, training_data=None, presence_penalty=0.0, frequency_penalty=0.0,
                    logit_bias=None, min_p=0.0, avoid_copies=0, messages=None):
    """Yield the text of one sample in pieces as its tokens are drawn (`generate`'s arguments).

    The pieces join into exactly `generate(sess, ..., return_as_list=True)[0]` for the same
    arguments and seed; the first comes after one forward pass of the prompt.

    Args:
        sess: a `Session` holding a model.
        prefix, seed, length, temperature, top_k, top_p, truncate, include_prefix, stop,
            repetition_penalty, presence_penalty, frequency_penalty, logit_bias, min_p, avoid_copies,
            messages: as in `generate`.
        nsamples, batch_size: must be 1 (a stream is one sample).
        check_copies: the last piece is a `copies.MarkedText` whose `.copy` is the whole sample's
            copy mark, as `generate(check_copies=True)` gives. Each piece then comes one piece
            late (the last must be known to be last). There is no `copy_threshold` here: the
            text is out before it can be checked; check `.copy` and discard it yourself.
        training_data: as in `generate`, for `check_copies` and `avoid_copies`.

    Yields:
        str pieces, none of them empty.

    Raises:
        ValueError: invalid options (the message names the argument and the fix).
        FileNotFoundError: `check_copies` and the run's training text cannot be found.
    """
    if (nsamples, batch_size) != (1, 1):
        raise ValueError(f"nsamples={nsamples!r}, batch_size={batch_size!r}: a stream is one sample; "
                         "use generate() for several")
    call = prepare(sess, prefix, length=length, temperature=temperature, top_k=top_k, top_p=top_p, truncate=truncate,
                   include_prefix=include_prefix, stop=stop, repetition_penalty=repetition_penalty,
                   presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=logit_bias,
                   min_p=min_p, avoid_copies=avoid_copies, training_data=training_data, messages=messages)
    marks = SampleMarks(sess.copy_index(training_data), call.enc) if check_copies else None
    text = call.text()
    chunks = sess.sampler.chunks(np.asarray([call.context], np.int32), length, seed=batch_seed(seed),  # generate's first batch
                                 chunk=STREAM_CHUNK, stop=lambda _: text.ended, options=call.options, guard=call.guard)
    pieces = _pieces(text, chunks)
    yield from pieces if marks is None else _last_marked(pieces, text, marks, call.prefix)


def _pieces(text, chunks):
    """The non-empty pieces of `text` as the sampler's `chunks` of tokens arrive, then what it held back."""
    for tokens in chunks:
        piece = text.feed(tokens[0])
        if piece:
            yield piece
    piece = text.finish()
    if piece:
        yield piece


def _last_marked(pieces, text, marks, prefix):
    """`pieces`, one late, the last as a `MarkedText` carrying the copy mark of the whole `text`."""
    held = None
    for piece in pieces:
        if held is not None:
            yield held
        held = piece
    if held is not None:
        last = MarkedText(held)
        last.copy = marks.mark(text.text, prefix).copy
        yield last
