"""Copies of the training text: the longest span a text shares verbatim with a run's training tokens.

This module owns the copy index and what it answers. The index is every 8-token span (n-gram) of
the training tokens, hashed to a 62-bit key, sorted, with the span's offset beside it: 14 bytes
a token (8 key, 4 offset, 2 the token itself). A text's own 8-grams are hashed the same way and
looked up with `searchsorted`; each hit is an (offset in the text, offset in the training data)
pair, and the longest run of hits on one diagonal (the same shift between the two) is the longest
shared span, `run + 7` tokens long. Spans shorter than 8 tokens are never reported: two texts in
one language share 3-token phrases by chance, and such phrases are not copies. Hashing and sorting
are NumPy only, so indexing a large text and checking a sample are quick (docs/quality.md has the
measurements).

It does not read datasets (the run's tokens come from `training/copy_source.py`, through the
session) and does not steer decoding (`copy_guard.py` forbids copies inside the compiled loop).
"""
import dataclasses

import numpy as np

SPAN = 8  # tokens in each indexed span: the shortest copy reported
# Two polynomial hashes modulo primes below 2**31, so every product fits in int64 (here and in
# `copy_guard.py`'s TensorFlow twin); together they make a 62-bit key.
MODULI = (2147483629, 2147483587)
BASES = (1000003, 999983)
_BLOCK = 4096  # line numbers are counted from the start of blocks of this many tokens
CAP = 64  # training offsets looked at per hashed span (a span repeated more often keeps the first 64)


def span_keys(tokens, n=SPAN):
    """The 62-bit key of each `n`-token span of `tokens` (int64 `[len - n + 1]`; empty when shorter)."""
    tokens = np.asarray(tokens).astype(np.int64) + 1  # + 1: a 0 id still changes the hash
    count = len(tokens) - n + 1
    if count <= 0:
        return np.zeros(0, np.int64)
    keys = []
    for modulus, base in zip(MODULI, BASES):
        h = np.zeros(count, np.int64)
        for i in range(n):
            h = (h * base + tokens[i:i + count]) % modulus
        keys.append(h)
    return (keys[0] << 31) | keys[1]


@dataclasses.dataclass
class Copy:
    """What a text shares with the training data.

    Attributes:
        longest: tokens in the longest span found verbatim in the training data (0 when none of 8+).
        tokens: tokens in the text checked.
        start: where that span starts in the text (a token index), or -1.
        offset: where it starts in the training tokens, or -1.
        line: the training text's line (stream runs) or document (documents runs) holding it, 1-based.
        where: 'line' or 'document'.
        share: the share of the text's 8-token spans found anywhere in the training data, in [0, 1].
    """

    longest: int
    tokens: int
    start: int = -1
    offset: int = -1
    line: int = 0
    where: str = "line"
    share: float = 0.0

    def mark(self):
        """'copied: 23 of 40 tokens from line 1812', or 'new: no 8-token span of the training data'."""
        if not self.longest:
            return f"new: no {SPAN}-token span of the training data"
        return f"copied: {self.longest} of {self.tokens} tokens from {self.where} {self.line}"

    def to_dict(self):
        return dict(dataclasses.asdict(self), mark=self.mark())


class CopyIndex:
    """The sorted 8-gram keys of a run's training tokens, and `check(tokens)` against them."""

    def __init__(self, tokens, *, newlines=None, separator=None):
        """Args:
            tokens: 1-D integer array, the training tokens (chunks joined end to end).
            newlines: int `[n_vocab]`, newline characters in each token's text (for line numbers).
            separator: the end-of-text id of a documents run: positions are given as documents.
        """
        self.tokens = np.asarray(tokens)
        keys = span_keys(self.tokens)
        self.order = np.argsort(keys, kind="stable").astype(np.uint32)  # [spans]: offsets sorted by key
        self.keys = keys[self.order]  # [spans] int64, sorted
        if separator is not None:
            self.where, self._counted = "document", np.arange(int(self.tokens.max(initial=0)) + 1) == separator
        else:
            self.where = "line"
            self._counted = np.asarray(newlines) if newlines is not None else np.zeros(1 + int(self.tokens.max(initial=0)), int)
        # separators / newlines before each block of _BLOCK tokens: 8 bytes a block, not a token
        per_block = np.add.reduceat(self._counted[self.tokens], np.arange(0, len(self.tokens), _BLOCK)) \
            if len(self.tokens) else np.zeros(0, np.int64)
        self._before = np.concatenate([[0], np.cumsum(per_block)])
        self.first = int(separator is not None and len(self.tokens) > 0 and self.tokens[0] != separator)

    @property
    def nbytes(self):
        return self.keys.nbytes + self.order.nbytes + self.tokens.nbytes + self._before.nbytes

    def check(self, tokens):
        """A `Copy` for `tokens` (a sample, or any encoded text)."""
        tokens = np.asarray(tokens, np.int64)
        keys = span_keys(tokens)
        if not len(keys) or not len(self.keys):
            return Copy(0, len(tokens))
        lo = np.searchsorted(self.keys, keys, side="left")
        hi = np.searchsorted(self.keys, keys, side="right")
        found = hi > lo
        share = float(found.mean())
        counts = np.minimum(hi - lo, CAP)
        if not counts.sum():
            return Copy(0, len(tokens), share=share)
        at = np.repeat(np.arange(len(keys)), counts)  # span offsets in the text, one per hit
        ramp = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        offsets = self.order[np.repeat(lo, counts) + ramp].astype(np.int64)  # training offsets of each hit
        start, offset, run = _longest_diagonal(at, offsets - at)
        offset += start
        longest = run + SPAN - 1
        return Copy(longest, len(tokens), start, offset, self.line_of(offset), self.where, share)

    def line_of(self, offset):
        """The 1-based line (or document) of the training text that holds token `offset`."""
        block = offset // _BLOCK
        if self.where == "document":  # separators up to it, the one opening it included
            return int(self._before[block] + self._counted[self.tokens[block * _BLOCK:offset + 1]].sum()) + self.first
        return int(self._before[block] + self._counted[self.tokens[block * _BLOCK:offset]].sum()) + 1


def _longest_diagonal(at, shift):
    """The longest run of consecutive `at` values sharing one `shift`: (first at, its shift, run length)."""
    order = np.lexsort((at, shift))
    at, shift = at[order], shift[order]
    breaks = np.flatnonzero((np.diff(at) != 1) | (np.diff(shift) != 0)) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.append(starts, len(at)))
    best = int(np.argmax(lengths))
    return int(at[starts[best]]), int(shift[starts[best]]), int(lengths[best])


def newline_counts(enc):
    """Newline characters in each token's text, int `[n_vocab]`."""
    return np.array([enc.decode_bytes([i]).count(b"\n") for i in range(len(enc.encoder))], np.int64)


class MarkedText(str):
    """A generated text (a `str`, so callers that expect texts still get texts) with its `Copy` as `.copy`."""

    copy = None


class SampleMarks:
    """`generate(check_copies=True, copy_threshold=N)`: each sample's copy mark, and copies dropped."""

    def __init__(self, index, enc, threshold=None):
        if threshold is not None and not (isinstance(threshold, int) and threshold >= SPAN):
            raise ValueError(f"copy_threshold={threshold!r} must be a number of tokens >= {SPAN} (the shortest "
                             "copy reported), or None to keep every sample")
        self.index, self.enc, self.threshold = index, enc, threshold
        self.dropped = 0
        self.longest = []  # the longest copied span of each sample checked

    def mark(self, text, prefix=None):
        """`text` as a `MarkedText` (its part after `prefix` checked), or None when it copies too much."""
        body = text[len(prefix):] if prefix and text.startswith(prefix) else text
        copy = self.index.check(self.enc.encode(body))
        self.longest.append(copy.longest)
        if self.threshold is not None and copy.longest >= self.threshold:
            self.dropped += 1
            return None
        marked = MarkedText(text)
        marked.copy = copy
        return marked

    def summary(self):
        """What this check found, for the run's model card: samples, their longest copies, and those dropped."""
        return {"samples": len(self.longest), "longest": max(self.longest, default=0),
                "copied": sum(n >= SPAN for n in self.longest), "span": SPAN, "dropped": self.dropped,
                "threshold": self.threshold}

    def report(self):
        """The line saying how many samples were dropped, or ''."""
        if not self.dropped:
            return ""
        return (f"dropped {self.dropped} sample(s) that share {self.threshold} or more tokens verbatim with the "
                "training data (copy_threshold)")
