"""Training windows: the one sampler that draws fixed-length token windows from token chunks.

This module owns the step between token chunks in memory and the windows a training step
reads, for both dataset modes. `WindowSampler` draws each window uniformly over its valid
starts: an index into the cumulative count of starts per chunk, so every (chunk, start) is
equally likely (upstream used rejection sampling and refused datasets whose average chunk was
shorter than the context). The random stream is a PCG64 generator whose state is saved with a
run and restored on resume.

- Stream mode (gpt-2-simple's; `dataset.py`'s chunks): a window starts at any token and lies
  inside one chunk.
- Documents mode (`eot=` given; `documents.py`'s streams `[eot] doc 1 [eot] doc 2 ...`): a
  window starts at a document's separator, or every `length` tokens inside a document longer
  than that (`window_starts`), and runs on through the following documents; past the end of its
  chunk it continues at the chunk's beginning (the stream is a ring), so the last documents are
  drawn as often as the first.

It does not own loading or encoding the chunks (`dataset.py`, `documents.py`), batching into
tensors, or the training loop.
"""
import json

import numpy as np


def separator_positions(chunk, eot, block=1 << 24):
    """Positions of `eot` in `chunk`, read `block` tokens at a time (memory stays bounded for memmaps)."""
    found = [np.flatnonzero(np.asarray(chunk[i:i + block]) == eot) + i for i in range(0, len(chunk), block)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def window_starts(chunk, eot, length):
    """Where windows of `length` tokens may start: each document's separator, and every `length`
    tokens inside a document longer than that (its later pieces)."""
    doc_starts = separator_positions(chunk, eot).astype(np.int64)
    if len(chunk) and chunk[0] != eot:
        doc_starts = np.concatenate([[0], doc_starts])  # a stream that does not begin with a separator
    ends = np.append(doc_starts[1:], len(chunk))
    pieces = -(-(ends - doc_starts) // length)  # ceil: pieces of each document
    offsets = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return np.repeat(doc_starts, pieces) + offsets * length


class WindowSampler:
    """Draws training windows uniformly over their valid starts in token chunks, reproducibly.

    Attributes:
        chunks: the non-empty token chunks (1-D integer arrays).
        longest: the longest chunk's length; the trainer's window is `min(n_ctx, longest)`.
        eot: the documents' separator id in documents mode, None in stream mode.
    """

    def __init__(self, chunks, seed=None, *, eot=None):
        """Args: chunks: 1-D integer arrays of token ids; seed: int seed, or None for entropy;
        eot: the separator id for documents mode, None for stream mode."""
        self.chunks = [chunk for chunk in chunks if len(chunk)]
        if not self.chunks:
            raise ValueError("WindowSampler got no tokens; pass non-empty chunks from load_dataset")
        self._lengths = np.array([len(chunk) for chunk in self.chunks], dtype=np.int64)
        self.longest = int(self._lengths.max())
        self.eot = None if eot is None else int(eot)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._starts = (None, None, None)  # (length, cumulative count of starts per chunk, starts or None)

    def sample(self, length):
        """One window of `length` tokens, as an int32 array [length].

        Raises:
            ValueError: when `length` is not in [1, longest].
        """
        length = int(length)
        if not 1 <= length <= self.longest:
            raise ValueError(
                f"sample length {length} must be in [1, {self.longest}] (the longest chunk); "
                "use a window of min(n_ctx, sampler.longest) tokens"
            )
        if self._starts[0] != length:
            self._starts = (length, *self._count_starts(length))
        _, cumulative, starts = self._starts
        index = int(self._rng.integers(cumulative[-1]))
        chunk = int(np.searchsorted(cumulative, index, side="right"))
        start = index - (int(cumulative[chunk - 1]) if chunk else 0)
        if starts is None:  # stream mode: the start is the position itself
            return np.asarray(self.chunks[chunk][start : start + length], dtype=np.int32)
        return _ring_window(self.chunks[chunk], int(starts[chunk][start]), length)

    def _count_starts(self, length):
        """The cumulative count of starts per chunk, and the starts themselves (None: every position)."""
        if self.eot is None:
            return np.cumsum(np.maximum(self._lengths - length + 1, 0)), None
        starts = [window_starts(chunk, self.eot, length) for chunk in self.chunks]
        return np.cumsum([len(s) for s in starts]), starts

    def sample_batch(self, batch_size, length):
        """`batch_size` windows (successive `sample` draws) as an int32 array [batch, length]."""
        return np.stack([self.sample(length) for _ in range(int(batch_size))])

    def get_state(self):
        """The random generator's state as a JSON-serialisable dict (for resuming a run)."""
        return json.loads(json.dumps(self._rng.bit_generator.state))

    def set_state(self, state):
        """Restore a state from `get_state`, so the same windows follow as in the saved run.

        Raises:
            ValueError: when `state` is not a PCG64 state dict.
        """
        if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
            raise ValueError(
                f"sampler state must be a dict from WindowSampler.get_state() (a PCG64 state), "
                f"got {str(state)[:80]!r}"
            )
        self._rng.bit_generator.state = state


def _ring_window(tokens, start, length):
    """`length` tokens from `start`; past the end of the chunk, continued from its beginning."""
    end = min(start + length, len(tokens))
    window = np.asarray(tokens[start:end], dtype=np.int32)
    if end - start < length:
        window = np.concatenate([window, np.resize(np.asarray(tokens[:length], np.int32), length - len(window))])
    return window
