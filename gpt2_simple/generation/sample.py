"""The compiled decoding loops: turning a model and a prompt into new token ids.

This module owns decoding: a loop compiled once per model with `tf.function` (input shapes with
`None` lengths, so a new prompt length, batch size or number of tokens does not retrace), an XLA
loop with preallocated caches for small batches, and the Python driver that chains their chunks.
Filtering logits and drawing a token are `draws.py`'s; text, prompts as strings and truncation
are `generate.py`'s.

Longer outputs than the context are produced in chunks by `Sampler.sample`: when the cache is
full, the newest half of the context becomes the new prompt (a sliding window).

Steering (penalties, stop sequences ending a row: `options.stop_hits`) is tensor inputs of the
loops, one value a row, so changing it never retraces; a loop returns once every row has ended.
Stop *strings* are text, checked by the callers between chunks (`stop=`).
"""
import numpy as np
import tensorflow as tf

from .. import heap, xla_choice
from ..model import columns
from . import joining
from .decoding import Decoding, cache_window, xla_batch
from .draws import Steer, row_seeds
from .options import Knobs, SamplingOptions, Steering, left_padded, text_tail

# Batches up to this size decode with the XLA loop, which is faster than the growing loop there (small
# batches are bound by reading the weights; docs/performance.md); each batch size compiles its own XLA
# program, once.
XLA_MAX_BATCH = 16


class Sampler:
    """The compiled decoding loops of one model.

    `sample()` may be called any number of times with any prompt length, batch size and number
    of tokens; each loop is traced once. One loop body (`_loop`) runs two ways, with the same
    draws (a token's randomness depends only on the seed and its index):
    - `decode_chunk`, a `tf.function` whose key/value caches grow by concatenation; it reads the
      prompt, and decodes large batches, where the matrix multiplications dominate;
    - `decode_fixed`, compiled by XLA, with caches preallocated to a window that holds the call's
      positions (`_fit`) and written in place: one fused program per step, so small batches (bound
      by reading the weights, not by arithmetic) lose the per-op overhead, and a step costs the
      same at every position.
    Both return the rows that drew a stop sequence (`options.stop_hits`, checked at every step).
    """

    def __init__(self, model, *, xla_max_batch=None, adapters=None):
        self.model = model
        self.adapters = adapters  # an `adapter_rows.AdapterTable`: each row may use its own LoRA adapter (the server)
        # None: XLA_MAX_BATCH, or 0 (never the XLA loop) where XLA is switched off or cannot compile.
        self._last_rows = (None, [])
        self._compiled = set()  # the XLA loop's input shapes met so far: each new one compiles a program
        self.xla_max_batch = (XLA_MAX_BATCH if xla_choice.decide() else 0) if xla_max_batch is None else xla_max_batch
        hp = model.hparams
        inputs = [
            tf.TensorSpec([], tf.int32),  # n: tokens to draw
            (tf.TensorSpec([None, 2], tf.int64),  # each row's (seed, stream row): `draws.row_seeds`
             tf.TensorSpec([None], tf.int64)),  # the index of each row's first token drawn in its stream
            Knobs.specs(hp.n_vocab),  # the sampling options' tensors
            Steering.specs(hp.n_vocab),  # the loop's state
        ]
        caches = [tf.TensorSpec([None, None, hp.head_dim], tf.float32)] * hp.n_layer  # [batch * n_head, positions, ...]
        pads = tf.TensorSpec([None], tf.int32)  # each row's left padding (prompts of different lengths)
        rows = adapters.specs() if adapters else []  # each row's adapter (none without a table)
        self._decode = tf.function(  # autograph off: plain TF ops only; converting the model costs seconds a trace
            self.decode_chunk,
            input_signature=[tf.TensorSpec([None, None], tf.int32), pads, caches, caches] + inputs + [rows],
            autograph=False)
        self._decode_fixed = tf.function(
            self.decode_fixed,
            input_signature=[tf.TensorSpec([None, 1], tf.int32), pads, caches, caches, tf.TensorSpec([], tf.int32)]
            + inputs + [columns.matrix_specs(model), rows], jit_compile=True, autograph=False)
        self._prefill = tf.function(lambda tokens, rows: model.forward(tokens, adapters=rows or None)[1:],
                                    autograph=False, input_signature=[tf.TensorSpec([1, None], tf.int32), rows])

    @property
    def tracing_count(self):
        return sum(f.experimental_get_tracing_count() for f in (self._decode, self._decode_fixed, self._prefill))

    def decode_chunk(self, pending, pads, keys, values, n, seed, knobs, steering, rows=()):
        """Feed `pending` (any length), growing the caches, then draw up to `n` tokens: see `_loop`."""
        return self._loop(pending, pads, keys, values, None, n, seed, knobs, steering, rows=rows)

    def decode_fixed(self, token, pads, keys, values, start, n, seed, knobs, steering, matrices, rows=()):
        """Feed `token` at position `start` into caches of a fixed window, then draw up to `n` (<= window - start).

        The caches are n_layer float32 `[batch * n_head, window, head_dim]`, valid before `start`;
        the loop writes positions up to start + n - 1 < window. See `_loop`.
        """
        return self._loop(token, pads, keys, values, start, n, seed, knobs, steering, matrices, rows)

    def _loop(self, pending, pads, keys, values, start, n, seed, knobs, steering, matrices=(), rows=()):
        """The one decoding loop: feed `pending`, then draw up to `n` (<= n_ctx) tokens one at a time.

        Args:
            pending: int32 `[batch, p]`, tokens not yet in the caches (a prompt, or the last drawn token).
            pads: int32 `[batch]`, each row's left padding (`GPT2.forward`'s): its first positions,
                which its tokens never see.
            keys, values: the caches (`GPT2.forward`'s layout).
            start: None to grow the caches (the graph loop, whose first step reads a whole prompt);
                or the int32 position of `pending` in caches of a fixed window (the XLA loop: one
                shape for the whole loop, written in place).
            n, seed: tokens to draw (n >= 1, some row live on entry); (each row's seed and stream
                row, `draws.row_seeds`; int64 `[batch]`, the index in its stream of each row's first token drawn).
            knobs: `Knobs.of(...)`, one value a row; steering: the loop's `Steering`.
            matrices: `columns.loop_matrices`, made once per `chunks` call (not per compiled call), or none.
            rows: each row's LoRA adapter (`adapter_rows.AdapterTable.rows`), or none.

        Returns:
            (int32 `[batch, n_ctx]` whose first `count` columns are the drawn tokens, count, bool
            `[batch]` ended, keys, values). count < n once every row has ended. The last drawn
            token is not fed: it is the caller's next `pending`.
        """
        hp = self.model.hparams
        steer = Steer(hp.n_vocab, knobs)
        seeds, first = seed
        fixed = start is not None
        slots = tf.range(hp.n_ctx)[None, :]

        forward = columns.decoder(self.model, matrices, rows or None)

        def body(i, fed, keys, values, drawn, steering):
            logits, keys, values = forward(fed, keys, values, start + i if fixed else None, pads)
            token = steer.draw(logits[:, -1, :], steering, (first + tf.cast(i, tf.int64))[:, None], seeds, sort=fixed)
            drawn = tf.where(tf.equal(slots, i), token, drawn)  # column i (a fixed shape, for XLA)
            return i + 1, token, keys, values, drawn, steer.update(token, steering)

        drawn = tf.zeros([tf.shape(pending)[0], hp.n_ctx], tf.int32)
        invariants = None
        if not fixed:  # the prompt's step, then one token a step; the caches grow
            cache = [tf.TensorShape([None, None, hp.head_dim])] * len(keys)
            invariants = (tf.TensorShape([]), tf.TensorShape([None, None]), cache, cache,
                          tf.TensorShape([None, hp.n_ctx]), Steering(*(t.shape for t in steering)))
        count, _, keys, values, drawn, steering = tf.while_loop(
            lambda i, *state: (i < n) & ~tf.reduce_all(state[-1].ended), body,
            (tf.constant(0), pending, keys, values, drawn, steering), shape_invariants=invariants)
        return drawn, count, steering.ended, keys, values

    def sample(self, context, length, *, seed=None, chunk=None, stop=None, options=None, guard=None, **kwargs):
        """Draw `length` tokens after `context` for every row.

        Args:
            context: int `[batch, ctx_len]`, ctx_len >= 1 and < n_ctx; or rows of different
                lengths (a list of lists, or left-padded with NO_TOKEN), decoded as one batch in
                which each row draws what it would alone.
            length: number of new tokens (>= 1); may exceed the context (sliding window).
            seed: int for reproducible draws, or None; or int64 `[batch, 2]`, each row's (seed,
                stream row): a row with (s, r) draws what row r of a call with `seed=s` draws.
            chunk: tokens drawn per compiled call; `stop` is checked between chunks.
            stop: optional `stop(tokens [batch, so_far])` -> a bool, or one bool per row: the
                rows that have ended. Sampling ends early once every row has.
            options: a `SamplingOptions`, or one a row (equal `avoid_copies`), or the fields as keyword arguments (`kwargs`):
                temperature, top_k, top_p, min_p: see `filter_logits`.
                repetition_penalty: see `draws.penalize`; 1.0 is off (and draws exactly as without it).
                presence_penalty, frequency_penalty: OpenAI's, subtracted from the logit of each
                    token drawn so far in this call: presence once, frequency once per draw (0.0: off).
                logit_bias: {token id: bias} added to those logits (None or {}: off).
                stop_tokens: up to MAX_STOPS token sequences; a row ends once it has drawn one of
                    them (only their last MAX_STOP_TOKENS tokens are compared).
                avoid_copies: N; no token is drawn that would make the text's last N + 1 tokens
                    (prompt included) a span of `guard`'s training tokens (0: off).
            guard: the `copy_guard.GuardIndex` of `avoid_copies` tokens, or None.

        Returns:
            int32 numpy `[batch, <= length]`: the new tokens only.
        """
        return np.concatenate(list(self.chunks(  # length >= 1: at least one chunk
            context, length, seed=seed, chunk=chunk, stop=stop, options=options, guard=guard, **kwargs)), axis=1)

    def chunks(self, context, length, *, seed=None, chunk=None, stop=None, options=None, guard=None, join=None,
               adapters=None, **kwargs):
        """`sample`, yielding each compiled call's new tokens (int32 numpy `[batch, k]`) as it returns.

        The first chunk holds one token for batches up to `xla_max_batch`: it comes after one
        forward pass of the prompt, which is what a stream shows first.

        `join(slots, fits)`, if given, is asked between the fixed-window loop's chunks, while a row
        is live, for rows to start now (continuous batching): `slots` are the ended rows, then the rows the batch may
        grow by (up to `xla_max_batch`); it returns `decoding.Joining` rows, which take `slots` in order,
        and `fits(rows)` says whether those rows can join (their texts fit the context). A joined
        row draws what it would alone; the chunks after it have the grown batch's rows.

        `adapters`: with the sampler's `AdapterTable`, each row's (slot, scale) (None: the base alone for every row).
        """
        context = left_padded(context)
        batch = len(context)
        options = options or SamplingOptions.make(**kwargs)
        options = [options] * batch if isinstance(options, SamplingOptions) else list(options)
        state = Decoding(history=context, pending=context, caches=self._empty_cache(batch),
                         out=np.zeros([batch, 0], np.int32), ended=np.zeros(batch, bool),
                         seeds=row_seeds(seed, batch) if np.ndim(seed) == 0 else np.asarray(seed, np.int64),
                         options=options, until=np.full(batch, length), adapters=adapters)
        chunk = int(chunk or length)
        knobs = Knobs.of(options, self.model.hparams.n_vocab, guard)
        while state.left():  # 0 once every row has ended or has all it wants
            room = self._room(state)
            if room < 1:
                self._slide(state)
                continue
            # Up to the next multiple of `chunk`, where `stop` is checked.
            n = min(chunk - state.drawn % chunk, state.left(), room)
            tokens, ended = self._decode_next(state, n, knobs)
            state.add(tokens)
            yield tokens  # before `stop` looks: a consumer may update what it answers from these tokens
            state.ended |= ended | (state.until <= state.drawn)  # the rows that drew a stop sequence or all they want
            if stop is not None:
                state.ended |= np.broadcast_to(np.asarray(stop(state.out), bool), state.ended.shape)
            if join is not None and state.start is not None and not state.ended.all() and self._join(state, join):
                knobs = Knobs.of(state.options, self.model.hparams.n_vocab, guard)

    def _room(self, state):
        """How many tokens the next call may draw: feeding `pending` and n - 1 drawn tokens must fit."""
        cached = state.start if state.start is not None else state.caches[0][0].shape[1]
        return self.model.hparams.n_ctx - cached - state.pending.shape[1] + 1

    def _slide(self, state):
        """The context is full: continue from the newest half of the text (sliding window)."""
        keep = max(self.model.hparams.n_ctx // 2, 1)
        state.prompt(state.history[:, -keep:])
        state.caches, state.start = self._empty_cache(len(state.history)), None

    def _decode_next(self, state, n, knobs):
        """Draw up to `n` tokens with the loop that fits: (numpy int32 `[batch, <= n]`, numpy bool `[batch]` ended)."""
        fixed = len(state.pending) <= self.xla_max_batch
        n_vocab = self.model.hparams.n_vocab
        steering = Steering(seen=tf.constant(state.seen(n_vocab)), recent=tf.constant(state.recent()),
                            counts=tf.constant(state.counts(n_vocab)), tail=tf.constant(text_tail(state.history)),
                            ended=tf.constant(state.ended))
        if state.start is None and fixed and state.pads.any():
            self._prefill_rows(state)
        pending, pads, (keys, values) = tf.constant(np.maximum(state.pending, 0)), tf.constant(state.pads), state.caches
        seed = (tf.constant(state.seeds), tf.constant(state.index()))
        rows = self._rows(state.adapters)
        if state.start is None:  # read the prompt (and draw one token, or a chunk without XLA)
            n = 1 if fixed else n
            drawn, count, ended, keys, values = self._decode(pending, pads, keys, values, tf.constant(n), seed, knobs,
                                                             steering, rows)
            if fixed:  # from here on, the XLA loop over caches of a fixed window
                state.start = keys[0].shape[1]
                keys, values = self._fit(keys, state), self._fit(values, state)
        else:
            state.matrices = columns.loop_matrices(self.model) if state.matrices is None else state.matrices
            drawn, count, ended, keys, values = self._decode_fixed(pending, pads, keys, values, tf.constant(state.start),
                                                                   tf.constant(n), seed, knobs, steering, state.matrices,
                                                                   rows)
            state.start += int(count)
            shapes = (pending.shape[0], keys[0].shape[1], rows[0][0][0].shape[1] if rows else 0)
            if shapes not in self._compiled:  # a compile frees hundreds of MB that malloc would keep
                self._compiled.add(shapes)
                heap.trim()
        state.caches = (keys, values)
        return drawn.numpy()[:, :int(count)], ended.numpy()

    def _join(self, state, join):
        """Ask `join` for rows to put in the ended slots, growing the batch to a power of two: whether any joined.

        `joining.admit` moves the rows and caches: a longer prompt shifts every row right, the
        window grows to what the rows want, and each joining prompt is read into its slot.
        """
        hp = self.model.hparams
        slots = [int(s) for s in np.flatnonzero(state.ended)] + list(range(len(state.ended), self.xla_max_batch))
        rows = join(slots, lambda rows: joining.fits(state, rows, hp.n_ctx)) if slots else []
        if not rows:
            return False
        assert joining.fits(state, rows, hp.n_ctx), "join returned rows that do not fit"
        taken = slots[:len(rows)]
        size = max(len(state.ended), xla_batch(max(taken) + 1, self.xla_max_batch))
        joining.admit(state, rows, taken, size=size, hparams=hp, empty=self._empty_cache,
                      prefill=lambda tokens, adapter: self._prefill(tokens, self._rows([adapter])))
        return True

    def _rows(self, adapters):
        """The compiled loops' `rows` input for rows using `adapters` ((slot, scale) each): none without a table.

        The last batch's are kept: rows are gathered again only when the batch's adapters or the table change.
        """
        if self.adapters is None:
            return []
        key = (tuple(adapters), self.adapters.version)
        if self._last_rows[0] != key:
            self._last_rows = (key, self.adapters.rows(adapters))
        return self._last_rows[1]

    def _prefill_rows(self, state):
        """Read a left-padded prompt row by row into the XLA loop's caches (padding costs no compute):
        each row's tokens but the last, behind its padding; the last column becomes `pending`."""
        hp = self.model.hparams
        keys, values = [[] for _ in range(hp.n_layer)], [[] for _ in range(hp.n_layer)]
        for row, pad, adapter in zip(state.pending, state.pads, state.adapters):
            read = (self._prefill(tf.constant(row[None, pad:-1]), self._rows([adapter])) if pad < len(row) - 1
                    else self._empty_cache(1))
            for layer, (k, v) in enumerate(zip(*read)):
                keys[layer].append(tf.pad(k, [[0, 0], [pad, 0], [0, 0]]))
                values[layer].append(tf.pad(v, [[0, 0], [pad, 0], [0, 0]]))
        state.start, state.pending = state.pending.shape[1] - 1, state.pending[:, -1:]
        state.caches = tuple(self._fit([tf.concat(c, axis=0) for c in caches], state) for caches in (keys, values))

    def _empty_cache(self, batch):
        hp = self.model.hparams
        empty = tf.zeros([batch * hp.n_head, 0, hp.head_dim], tf.float32)
        return [empty] * hp.n_layer, [empty] * hp.n_layer

    def _fit(self, caches, state):
        """The prompt's caches padded with zeros to the XLA loop's window of positions (one layout for both loops).

        The window holds every position the rest of the call writes (`cache_window`): each later
        step draws at most the tokens left (`n <= state.left()`) until the call ends, slides or a row joins.
        """
        window = cache_window(state.start + state.left(), self.model.hparams.n_ctx)
        return [tf.pad(c, [[0, 0], [0, window - c.shape[1]], [0, 0]]) for c in caches]
