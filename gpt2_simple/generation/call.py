"""One generate call, prepared once: a prefix and gpt-2-simple's options -> what the sampler and the text need.

This module owns the step that `generate`, `generate_to_file` and `generate_stream` share before
any token is drawn: checking the options (one-line `ValueError`s naming the argument), encoding
the prefix, deciding "as the run trained" (a documents run, `run_record.trained_on_documents`,
starts every sample after end-of-text and ends it at the next one), building the
`SamplingOptions`, the copy guard and the stop strings, and settling a sample's tokens into its
text (`Call.text`, a `stream.TextStream`: the one piece of code that turns tokens into text).
Drawing is `sample.py`'s; printing and files are `generate.py`'s.
"""
import codecs
import dataclasses

from ..formats import chat_template
from ..formats.run_record import trained_on_documents
from . import ranges
from .copy_guard import check_span
from .options import MAX_STOPS, SamplingOptions, bias_vector
from .stop_strings import StopStrings


@dataclasses.dataclass(frozen=True)
class Call:
    """A prepared call: what the model reads first, how it draws, and how its tokens become text."""

    enc: object  # the session's `encoder.Encoder`
    prefix: str  # the prompt as text, or None
    prompt: list  # the prefix's token ids ([] without one)
    context: list  # what the model reads first: the prompt, after end-of-text for a documents run
    options: SamplingOptions
    guard: object  # the `copy_guard.GuardIndex` of `avoid_copies`, or None
    stops: StopStrings
    eot: int  # a documents run's end-of-text id (a sample ends at it), or None
    truncate: str = None
    include_prefix: bool = True

    def text(self):
        """A `TextStream` for one sample of this call: its pieces join into the text `generate` returns."""
        return TextStream(self.enc, self.prompt, self.prefix, stops=self.stops, truncate=self.truncate,
                          include_prefix=self.include_prefix, eot=self.eot)

    def settle(self, tokens):
        """The finished `TextStream` of one sample's drawn `tokens`: its `.text`, and whether it `.ended`."""
        text = self.text()
        text.feed(list(tokens), final=True)
        return text

    def may_end_early(self):
        """Whether a sample can end before `length` tokens (a stop string, `truncate` or end-of-text)."""
        return bool(self.truncate or self.stops or self.eot is not None)

    def ended(self, rows):
        """The sampler's `stop`: which rows of drawn tokens have ended."""
        return [self.settle(row).ended for row in rows]


def prepare(sess, prefix=None, *, length, truncate=None, include_prefix=True, stop=None, logit_bias=None,
            avoid_copies=0, training_data=None, nsamples=1, batch_size=1, messages=None, **sampling):
    """Check `generate`'s arguments and prepare its call on the model in `sess`; ValueError naming a bad one.

    `sampling`: the options with a range in `ranges.RANGES` (temperature, top_k, top_p, min_p and the
    penalties), each checked against it and carried to the loops in the `SamplingOptions`.
    `messages`: a conversation to answer instead of a prefix: rendered by the run's chat template
    (`formats/chat_template.py`), each sample being the assistant's reply, ended at end-of-text.
    """
    enc, n_ctx = sess.encoder, sess.sampler.model.hparams.n_ctx  # the sampler raises if no model is loaded
    documents = trained_on_documents(sess.folder)
    if messages is not None:
        if prefix:
            raise ValueError("pass prefix= (text to continue) or messages= (a conversation to answer), not both")
        template = chat_template.ChatTemplate(chat_template.read_run_template(sess.folder),
                                              eos_token=enc.decode([enc.eot_token]))
        prefix, include_prefix = template.render(chat_template.check_messages(messages)), False
    prefix = prefix or None
    prompt = enc.encode(prefix, allow_special=messages is not None) if prefix else []
    eot = enc.eot_token if documents or messages is not None else None  # a document or a reply: one per sample
    context = context_of(prompt, enc.eot_token, documents=documents)
    check_options(nsamples, batch_size, length, **sampling)
    if len(context) >= n_ctx:
        raise ValueError(f"prefix is {len(context)} tokens but the model's context is n_ctx={n_ctx}; "
                         f"shorten the prefix below {n_ctx} tokens")
    if logit_bias is not None and not isinstance(logit_bias, dict):
        raise ValueError(f"logit_bias={logit_bias!r} must be a dict {{token id: bias}} or None")
    bias_vector(logit_bias, sess.model.hparams.n_vocab)  # raises naming an id out of range
    guard = sess.copy_guard(avoid_copies, training_data) if check_span(avoid_copies) else None
    stops = StopStrings(stop)
    if messages is not None and template.turn_end and template.turn_end not in stops.strings:
        stops = StopStrings([template.turn_end] + stops.strings)  # a reply ends where the next turn begins
    stop_tokens = stops.tokens(enc)
    if eot is not None and len(stop_tokens) < MAX_STOPS:
        stop_tokens.append([eot])  # the compiled loop ends a row at its end-of-text
    options = SamplingOptions.make(logit_bias=logit_bias, stop_tokens=stop_tokens, avoid_copies=avoid_copies,
                                   **{name: ranges.plain(name, value) for name, value in sampling.items()})
    return Call(enc, prefix, prompt, context, options, guard, stops, eot, truncate, include_prefix)


class TextStream:
    """The text of one sample as its tokens arrive.

    Attributes:
        text: the settled text so far (what the pieces returned by `feed` join into).
        ended: a stop string or `truncate` has appeared; nothing more will be added.
    """

    def __init__(self, enc, context, prefix=None, *, stops=None, truncate=None, include_prefix=True, lstrip=True,
                 eot=None):
        """
        Args:
            enc: the `encoder.Encoder`.
            context: the prompt's token ids; their text is part of the sample when `prefix` is set.
            prefix: the prompt as text (None: the sample is the new text only, as in `generate`).
            stops: a `StopStrings`; truncate: one more stop string; include_prefix: as in `generate`.
            lstrip: remove leading newlines, as `generate` does (the server keeps them).
            eot: the end-of-text id of a documents run: the sample ends before it (None: a token like any other).
        """
        self.enc, self.prefix, self.include_prefix, self.lstrip = enc, prefix or None, include_prefix, lstrip
        self.eot = eot
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
        tokens = list(tokens)
        at_eot = self.eot is not None and self.eot in tokens
        if at_eot:  # the document has ended: what it held back is released
            tokens, final = tokens[:tokens.index(self.eot)], True
        self._raw += self._decoder.decode(self.enc.decode_bytes(tokens), final=final)
        piece = self._settle(final)
        self.ended = self.ended or at_eot
        return piece

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


def context_of(prompt, eot, *, documents):
    """What the model reads first for a `prompt` of token ids: end-of-text (`eot`) alone for an empty one;
    on a run trained on documents, `eot` before it (a document starts there) unless it begins with it."""
    if not prompt:
        return [eot]
    return [eot] + list(prompt) if documents and prompt[0] != eot else list(prompt)


def check_options(nsamples, batch_size, length, **sampling):
    """Raise a one-line ValueError for options `generate` cannot take (before any model is loaded).

    `sampling`: options of `ranges.RANGES` by name, checked in the order given.
    """
    checks = [
        (isinstance(batch_size, int) and batch_size > 0, f"batch_size={batch_size!r} must be a positive integer"),
        (isinstance(nsamples, int) and nsamples > 0, f"nsamples={nsamples!r} must be a positive integer"),
        (not (isinstance(nsamples, int) and isinstance(batch_size, int) and batch_size > 0
              and nsamples % batch_size), f"nsamples={nsamples} is not divisible by batch_size={batch_size}; "
         f"pass a multiple of it such as nsamples={batch_size * max(1, round(nsamples / batch_size))}"
         if isinstance(nsamples, int) and isinstance(batch_size, int) and batch_size > 0 else ""),
        (isinstance(length, int) and length > 0, f"length={length!r} must be a positive number of tokens"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for name, value in sampling.items():
        ranges.check(name, value)
