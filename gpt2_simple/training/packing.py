"""Training windows of structured examples: one example a row, or several packed into one.

This module owns the step between encoded examples (`chats.Examples`: tokens and which of them
to train on) and the rows a training step reads. A row is int32 `[4, length]`, its channels
`CHANNELS`: the tokens, 1 where a token is trained (it is predicted from the one before it, in
its own example), the segment each token belongs to (0: padding), and its position inside its
example. With `pack=True` a window holds examples drawn one after another until the next does
not fit (it is not used), each attending only to itself (`model.train_logits(segments=,
positions=)`): positions restart at 0, so a packed window's loss is the sum of its examples'
losses run alone. Without packing a row is one example and padding. An example longer than the
window is cut to it (its beginning). Examples are drawn uniformly with a PCG64 generator whose
state is saved with a run, as `windows.WindowSampler`'s is.
"""
import numpy as np

from .windows import WindowSampler

CHANNELS = ("tokens", "trained", "segments", "positions")


class ExampleSampler(WindowSampler):
    """Draws rows of examples, packed or one a row, reproducibly (state as `WindowSampler`'s).

    Attributes:
        chunks: each example's tokens (what training samples start from).
        longest: the longest window worth drawing: all examples together when packing, else the longest one.
    """

    def __init__(self, examples, seed=None, *, pack=True, eot=0):
        self.examples, self.pack, self.eot = examples, bool(pack), int(eot)
        self.chunks = list(examples.tokens)
        lengths = np.array([len(t) for t in self.chunks], np.int64)
        self.longest = int(lengths.sum() if pack else lengths.max())
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def sample(self, length):
        """One row `[4, length]` (`CHANNELS`)."""
        row = np.zeros((len(CHANNELS), length), np.int32)
        row[0] = self.eot  # padding reads end-of-text, trains nothing and sees only padding
        at, segment = 0, 1
        while at < length:
            index = int(self._rng.integers(len(self.chunks)))
            tokens, trained = self.examples.tokens[index][:length], self.examples.masks[index][:length]
            if at + len(tokens) > length:
                break
            row[0, at:at + len(tokens)] = tokens
            row[1, at + 1:at + len(tokens)] = trained[1:]
            row[2, at:at + len(tokens)] = segment
            row[3, at:at + len(tokens)] = np.arange(len(tokens))
            at, segment = at + len(tokens), segment + 1
            if not self.pack:
                break
        return row

    def sample_batch(self, batch_size, length):
        """`batch_size` rows as int32 `[batch, 4, length]`."""
        return np.stack([self.sample(int(length)) for _ in range(int(batch_size))])
