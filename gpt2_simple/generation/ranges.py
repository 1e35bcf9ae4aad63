"""The one table of sampling options' ranges, read by `generate`'s checks and by the server's.

This module owns which values each sampling option takes: in Python (`generate`,
`generate_stream`: a `ValueError` naming the argument), and on the wire, where OpenAI's contract
is narrower for some (`temperature` up to 2, the penalties from -2 to 2) and the server answers
400 naming the field. Both read the same row, so a new option gets its range in one place.
Applying an option is `draws.py`'s; the server's other fields are `serving/openai_api.py`'s.
"""
import dataclasses
import math
import numbers


@dataclasses.dataclass(frozen=True)
class Range:
    """The values of one option: [low, high] (`low_open`: low itself excluded), and OpenAI's [low, high] on the wire."""

    low: float
    high: float = math.inf
    low_open: bool = False
    integer: bool = False
    wire: tuple = None  # (low, high, low_open) where the server's range differs from Python's
    says: str = ""  # the rule in words, as an error shows it ("> 0")
    hint: str = ""  # what a user should try ("0.7 is a good start")

    def check(self, name, value):
        """`value` if Python takes it, else a one-line ValueError naming `name`, the rule and the hint."""
        kind = numbers.Integral if self.integer else numbers.Real
        ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > self.low if self.low_open else value >= self.low) and value <= self.high
        if not ok:
            raise ValueError(f"{name}={value!r} must be {self.says}" + (f" ({self.hint})" if self.hint else ""))
        return value

    def on_wire(self):
        """(low, high, low_open) of the server's JSON field."""
        return self.wire or (self.low, self.high, self.low_open)


RANGES = {
    # On the wire temperature 0 means greedy decoding (OpenAI's), which the server turns into top_k=1.
    "temperature": Range(0.0, low_open=True, wire=(0.0, 2.0, False), says="> 0", hint="0.7 is a good start"),
    "top_k": Range(0, integer=True, says="an integer >= 0", hint="0 turns it off"),
    "top_p": Range(0.0, 1.0, wire=(0.0, 1.0, True), says="in [0, 1]", hint="0 turns it off; 0.9 is typical"),
    "min_p": Range(0.0, 1.0, says="in [0, 1]", hint="0.0 turns it off; 0.05 is typical"),
    "repetition_penalty": Range(0.0, low_open=True, wire=(0.0, 100.0, True), says="a number > 0",
                                hint="1.0 turns it off; 1.2 is typical"),
    "presence_penalty": Range(-math.inf, wire=(-2.0, 2.0, False), says="a finite number",
                              hint="0.0 turns it off; OpenAI allows -2 to 2"),
    "frequency_penalty": Range(-math.inf, wire=(-2.0, 2.0, False), says="a finite number",
                               hint="0.0 turns it off; OpenAI allows -2 to 2"),
}


def check(name, value):
    """`RANGES[name].check(name, value)`: the Python check of one option; a TypeError for an unknown name."""
    if name not in RANGES:
        raise TypeError(f"{name!r} is not a sampling option; the options are {', '.join(RANGES)}")
    return RANGES[name].check(name, value)


def plain(name, value):
    """A checked option's value as the `SamplingOptions` field holds it: a Python int or float (hashable, exact)."""
    return int(value) if RANGES[name].integer else float(value)
