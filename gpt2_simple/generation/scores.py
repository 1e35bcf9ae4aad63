"""Scoring token sequences: each token's log-probability under the model, and the likeliest alternatives.

This module owns the numbers behind OpenAI's `logprobs`: one forward pass over whole sequences
(prompt and drawn tokens together), compiled once per model with `None` shapes (a new batch or
length never retraces), giving `model.logprobs.token_logprobs` (of the raw logits, before
temperature, top-k/top-p and penalties). Rows of different lengths share a pass:
they are padded on the right, which a causal model never looks at. It also finds which drawn
tokens a returned text covers. Shaping the JSON is `openai_api.py`'s; running it is `batcher.py`'s.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from ..model.adapter_rows import BASE
from ..model.logprobs import token_logprobs

MAX_TOP = 10  # alternatives computed per position: OpenAI allows 5, lm-evaluation-harness once asked for 10


@dataclasses.dataclass
class Scores:
    """One sequence's scores.

    tokens: the ids; logprobs: each token's log-probability given the ones before it (the first
    is None: nothing predicts it); top: per token, [(id, logprob)] of the likeliest MAX_TOP at
    its position (the first is None).
    """

    tokens: list
    logprobs: list
    top: list

    def tail(self, start):
        """The scores of tokens[start:]."""
        return Scores(self.tokens[start:], self.logprobs[start:], self.top[start:])


class LogprobScorer:
    """The compiled pass behind OpenAI's `logprobs` for one model: each token's log-probability and its alternatives."""

    def __init__(self, model, adapters=None):
        self.model, self.adapters = model, adapters  # adapters: an `adapter_rows.AdapterTable`, or None
        self._score = tf.function(self.score_batch, autograph=False, input_signature=[
            tf.TensorSpec([None, None], tf.int32), adapters.specs() if adapters else []])

    @property
    def tracing_count(self):
        return self._score.experimental_get_tracing_count()

    def score_batch(self, tokens, rows=()):
        """int32 `[batch, seq]` -> (logprob of each next token `[batch, seq - 1]`, top values and ids `[batch, seq - 1, MAX_TOP]`);
        `rows`: each row's LoRA adapter (`AdapterTable.rows`), or none."""
        return token_logprobs(self.model, tokens, top=MAX_TOP, adapters=rows or None)

    def score(self, sequences, adapters=None):
        """Token lists (each 1..n_ctx long) -> one `Scores` each, from one forward pass; `adapters`: with a table,
        each sequence's (slot, scale)."""
        longest = max(len(s) for s in sequences)
        if longest < 2:  # nothing is predicted; a pass needs two positions
            return [Scores(list(s), [None] * len(s), [None] * len(s)) for s in sequences]
        batch = np.zeros([len(sequences), longest], np.int32)  # right padding: no earlier position sees it
        for row, s in zip(batch, sequences):
            row[:len(s)] = s
        rows = self.adapters.rows(adapters or [BASE] * len(sequences)) if self.adapters else []
        chosen, values, ids = (t.numpy() for t in self._score(tf.constant(batch), rows))
        out = []
        for r, s in enumerate(sequences):
            n = len(s) - 1
            top = [list(zip(ids[r, i].tolist(), values[r, i].tolist())) for i in range(n)]
            out.append(Scores(list(s), [None] + chosen[r, :n].tolist(), [None] + top))
        return out


def covered(enc, tokens, text, stopped):
    """How many of `tokens` (drawn after the prompt) a completion's `text` shows.

    All of them when the row ran to its length; when a stop string ended it, up to and including
    the token where the text ends (the one that began the stop), so a scorer always sees the
    token that was drawn last, as lm-evaluation-harness expects with `max_tokens: 1`.
    """
    if not stopped:
        return len(tokens)
    for k in range(len(tokens) + 1):
        if len(enc.decode(tokens[:k])) > len(text):
            return k
    return len(tokens)
