"""Streaming: text pieces as tokens are drawn, which join into exactly the text `generate` returns.

This module owns turning a growing list of token ids into settled text (`TextStream`): bytes are
decoded incrementally, so a piece never ends inside a UTF-8 character that byte-level BPE split
across tokens; characters that could still begin a stop string (or `truncate`) are held back
until they cannot; leading newlines are held until something follows them, and the prefix is
shown or not as `generate` does. `generate_stream` drives one sample through
`Sampler.chunks`; the server (`serve.py`) uses `TextStream` for each row of a batch.
"""
import codecs

import numpy as np

from .copies import MarkedText, SampleMarks
from .copy_guard import check_span
from .draws import batch_seed
from .generate import _check_penalty, check_adjustments, check_options
from .options import SamplingOptions
from .stop_strings import StopStrings

# Tokens per compiled call while streaming (the first call draws one token after the prompt).
STREAM_CHUNK = 4


class TextStream:
    """The text of one sample as its tokens arrive.

    Attributes:
        text: the settled text so far (what the pieces returned by `feed` join into).
        ended: a stop string or `truncate` has appeared; nothing more will be added.
    """

    def __init__(self, enc, context, prefix=None, *, stops=None, truncate=None, include_prefix=True, lstrip=True):
        """
        Args:
            enc: the `encoder.Encoder`.
            context: the prompt's token ids; their text is part of the sample when `prefix` is set.
            prefix: the prompt as text (None: the sample is the new text only, as in `generate`).
            stops: a `StopStrings`; truncate: one more stop string; include_prefix: as in `generate`.
            lstrip: remove leading newlines, as `generate` does (the server keeps them).
        """
        self.enc, self.prefix, self.include_prefix, self.lstrip = enc, prefix or None, include_prefix, lstrip
        self.stops = StopStrings([s for s in (stops.strings if stops else []) + [truncate] if s])
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=enc.errors)
        self._raw = ""  # every complete character decoded so far
        self.text, self.ended = "", False
        if self.prefix:
            self._raw = self._decoder.decode(enc.decode_bytes(context))

    def feed(self, tokens, final=False):
        """Add new token ids; returns the newly settled text ('' when nothing settled yet)."""
        if self.ended:
            return ""
        self._raw += self._decoder.decode(self.enc.decode_bytes(tokens), final=final)
        return self._settle(final)

    def finish(self):
        """No more tokens: release what was held back; returns the last piece."""
        return self.feed([], final=True)

    def _settle(self, final):
        raw, prefix = self._raw, self.prefix
        if prefix and len(raw) < len(prefix) and prefix.startswith(raw) and not final:
            return ""  # cannot tell yet whether the text begins with the prefix
        has_prefix = bool(prefix) and raw.startswith(prefix)
        body = raw[len(prefix):] if has_prefix else raw
        at = self.stops.find(body)
        if at >= 0:
            body, self.ended = body[:at], True
        elif not final:
            body = body[:len(body) - self.stops.pending(body)]
        text = prefix + body if has_prefix and self.include_prefix else body
        text = text.lstrip("\n") if self.lstrip else text
        piece, self.text = text[len(self.text):], text
        return piece


def generate_stream(sess, prefix=None, *, seed=None, length=1023, temperature=0.7, top_k=0, top_p=0.0,
                    truncate=None, include_prefix=True, stop=None, repetition_penalty=1.0, nsamples=1,
                    batch_size=1, check_copies=False, training_data=None, presence_penalty=0.0, frequency_penalty=0.0,
                    logit_bias=None, min_p=0.0, avoid_copies=0):
    """Yield the text of one sample in pieces as its tokens are drawn (`generate`'s arguments).

    The pieces join into exactly `generate(sess, ..., return_as_list=True)[0]` for the same
    arguments and seed; the first comes after one forward pass of the prompt.

    Args:
        sess: a `Session` holding a model.
        prefix, seed, length, temperature, top_k, top_p, truncate, include_prefix, stop,
            repetition_penalty, presence_penalty, frequency_penalty, logit_bias, min_p, avoid_copies:
            as in `generate`.
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
    enc, sampler = sess.encoder, sess.sampler
    prefix = prefix or None
    context = enc.encode(prefix) if prefix else [enc.eot_token]
    check_options(1, 1, length, temperature, top_k, top_p)
    if len(context) >= sess.model.hparams.n_ctx:
        raise ValueError(f"prefix is {len(context)} tokens but the model's context is "
                         f"n_ctx={sess.model.hparams.n_ctx}; shorten the prefix below that")
    _check_penalty(repetition_penalty)
    adjust = check_adjustments(presence_penalty, frequency_penalty, logit_bias, min_p, sess.model.hparams.n_vocab)
    marks = SampleMarks(sess.copy_index(training_data), enc) if check_copies else None
    guard = sess.copy_guard(avoid_copies, training_data) if check_span(avoid_copies) else None
    stops = StopStrings(stop)
    text = TextStream(enc, context, prefix, stops=stops, truncate=truncate, include_prefix=include_prefix)
    chunks = sampler.chunks(
        np.asarray([context], np.int32), length, seed=batch_seed(seed), chunk=STREAM_CHUNK,  # generate's first batch
        stop=lambda _: text.ended,
        options=SamplingOptions.make(temperature=temperature, top_k=top_k, top_p=top_p,
                                     repetition_penalty=repetition_penalty, stop_tokens=stops.tokens(enc),
                                     avoid_copies=avoid_copies, **adjust), guard=guard)
    pieces = _pieces(text, chunks)
    yield from pieces if marks is None else _last_marked(pieces, text, marks, prefix)


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
