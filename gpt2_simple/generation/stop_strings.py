"""Stop strings on the text side: checking them, finding them in text, and telling the sampler.

This module owns what a stop string means for text: `stop=` given as one string or a list is
checked once (`StopStrings`), turned into token sequences for the compiled loop (which ends a row
as soon as it draws the canonical encoding of one), searched for in decoded text between chunks
(which also catches the same text spelled with other tokens), and cut off, first occurrence
first, as `truncate` is. The compiled side (penalty, stop sequences) is `sample.py`'s.
"""
from .options import MAX_STOPS


class StopStrings:
    """The stop strings of one request.

    Attributes:
        strings: the stop strings, in the order given (empty: none).
    """

    def __init__(self, stop, *, name="stop", limit=MAX_STOPS):
        """Check `stop`: None, a non-empty string, or a list of up to `limit` non-empty strings.

        The one check of stop strings: `generate`'s `stop` (up to MAX_STOPS, what the compiled
        loop holds) and the server's `stop` field (OpenAI's limit, 4).

        Raises:
            ValueError: naming `name` (the argument, flag or JSON field) and the fix.
        """
        strings = [stop] if isinstance(stop, str) else [] if stop is None else stop
        if not isinstance(strings, (list, tuple)) or not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"{name}={stop!r} must be a non-empty string or a list of non-empty strings")
        if len(strings) > limit:
            raise ValueError(f"{name} has {len(strings)} strings; at most {limit} are allowed")
        self.strings = list(strings)

    def __bool__(self):
        return bool(self.strings)

    def tokens(self, enc):
        """The token sequences the compiled loop looks for: each string's own encoding (`<|endoftext|>`: one id)."""
        return [enc.encode(s, allow_special=True) for s in self.strings]

    def find(self, text):
        """The index of the first occurrence of any stop string in `text`, or -1."""
        hits = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        return min(hits) if hits else -1

    def cut(self, text):
        """`text` up to its first stop string (all of it without one)."""
        at = self.find(text)
        return text if at < 0 else text[:at]

    def pending(self, text):
        """How many characters at the end of `text` could begin a stop string (hold them back)."""
        longest = 0
        for s in self.strings:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest
