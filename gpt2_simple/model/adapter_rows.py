"""Many LoRA adapters over one frozen base, chosen per row: the table of adapters and a batch's rows of them.

This module owns serving several fine-tunes of one base at once. An `AdapterTable` holds each
adapter's A `[nx, r]` and B `[r, nf]` (B already times its scale, alpha / r) under a slot number;
`rows(adapters)` gives, for a batch whose row i wants adapter slot s_i at scale c_i, every
adaptable matrix's A `[batch, nx, R]` and c_i B `[batch, R, nf]` (zeros for slot 0, the base alone,
and for a matrix an adapter leaves alone; ranks padded with zeros to R, the largest held).
`GPT2.forward` and `columns.step` add `(x @ A) @ B` row by row (`lora.row_update`): the base
matrices are read once a step for every row, and mixing adapters costs only the low-rank
products. `W + A @ B` is never formed. Reading adapters from run folders is `formats/adapters.py`'s;
which request uses which slot is the server's.
"""
import threading

import numpy as np
import tensorflow as tf

from .lora import LAYER_PATHS, TARGETS

BASE = (0, 1.0)  # (slot, scale) of a row of the base model alone


class AdapterTable:
    """The adapters one base serves, by slot (1, 2, ...; 0 is the base alone).

    Each adaptable matrix keeps every adapter stacked, `A` `[adapters + 1, nx, R]` and `B`
    `[adapters + 1, R, nf]` (position 0: zeros, the base alone), so a batch's rows are one gather a
    matrix. Adding or removing an adapter builds the stacks again (briefly twice their size).
    """

    def __init__(self, hparams):
        self.hparams = hparams
        self.positions = {0: 0}  # slot -> its position in the stacks
        self.ranks = {}  # slot -> its own rank
        self._next = 1
        self._stacks = None  # [(A, B) per target in TARGETS order] per block; None: no adapter yet
        self.version = 0  # changes with every add and remove
        self._lock = threading.Lock()

    def shapes(self):
        """`{target: (nx, nf)}` of the base's adaptable matrices."""
        e = self.hparams.n_embd
        return {"c_attn": (e, 3 * e), "attn/c_proj": (e, e), "c_fc": (e, 4 * e), "mlp/c_proj": (4 * e, e)}

    @property
    def rank(self):
        """R, the rank every adapter is padded to: the largest added so far (1 before any)."""
        return self._stacks[0][0][0].shape[2] if self._stacks else 1

    def add(self, config, arrays, *, source):
        """Hold the adapters `arrays` (`{name: array}`, `model/h0/attn/c_attn/lora_A`, ...) of `config` (a
        `lora.LoRAConfig`); returns their slot. A ValueError names `source` when they do not fit this base."""
        shapes, rank = self.shapes(), max(self.rank, config.rank)
        new = []
        for i in range(self.hparams.n_layer):
            pairs = []
            for target in TARGETS:
                nx, nf = shapes[target]
                a = np.zeros([1, nx, rank], np.float32)
                b = np.zeros([1, rank, nf], np.float32)
                if target in config.targets:
                    a_, b_ = (arrays.get(f"model/h{i}/{LAYER_PATHS[target]}/lora_{x}") for x in "AB")
                    if a_ is None or b_ is None or a_.shape != (nx, config.rank) or b_.shape != (config.rank, nf):
                        raise ValueError(f"{source}: the adapter of layer h{i} {target} is missing or shaped for "
                                         f"another model than this base (n_embd={self.hparams.n_embd}, "
                                         f"n_layer={self.hparams.n_layer})")
                    a[0, :, :config.rank], b[0, :config.rank] = a_, np.asarray(b_, np.float32) * np.float32(config.scale)
                pairs.append((a, b))
            new.append(pairs)
        with self._lock:
            old = self._stacks or [[self._zeros(shapes[t], rank) for t in TARGETS] for _ in range(self.hparams.n_layer)]
            self._stacks = [[(tf.concat([_padded(a, rank, 2), n_a], 0), tf.concat([_padded(b, rank, 1), n_b], 0))
                             for (a, b), (n_a, n_b) in zip(block, added)] for block, added in zip(old, new)]
            slot, self._next = self._next, self._next + 1
            self.positions[slot], self.ranks[slot] = len(self.positions), config.rank
            self.version += 1
        return slot

    def remove(self, slot):
        """Drop the adapter in `slot` (its rows must have ended)."""
        with self._lock:
            if slot not in self.ranks:
                return
            order = [s for s, _ in sorted(self.positions.items(), key=lambda item: item[1]) if s != slot]
            keep = [self.positions[s] for s in order]
            del self.ranks[slot]
            self.positions = {s: i for i, s in enumerate(order)}
            self._stacks = [[(tf.gather(a, keep), tf.gather(b, keep)) for a, b in block] for block in self._stacks]
            self.version += 1

    def __contains__(self, slot):
        return slot in self.positions

    def nbytes(self, slot):
        """The bytes one adapter takes in the stacks."""
        return sum((nx + nf) * self.rank * 4 for nx, nf in self.shapes().values()) * self.hparams.n_layer

    def specs(self):
        """The `tf.TensorSpec`s of `rows`' result, for a compiled signature (batch and rank of any size)."""
        shapes = self.shapes()
        pair = tuple((tf.TensorSpec([None, nx, None], tf.float32), tf.TensorSpec([None, None, nf], tf.float32))
                     for nx, nf in (shapes[t] for t in TARGETS))
        return [pair] * self.hparams.n_layer

    def rows(self, adapters):
        """Each row's adapter for a batch: `adapters` lists (slot, scale) a row (`BASE`: none).

        Returns:
            one 4-tuple a block, of (A `[batch, nx, R]`, B `[batch, R, nf]`) for c_attn, attn c_proj, c_fc and
            mlp c_proj: what `GPT2.forward(adapters=)` takes.
        """
        with self._lock:  # `add` and `remove` may come from another thread (the server's adapter routes)
            # A slot no longer held is an ended row's (a live row's adapter is removed only once it has ended).
            index = tf.constant([self.positions.get(slot, 0) for slot, _ in adapters], tf.int32)
            stacks = self._stacks or [[self._zeros(shape, 1) for shape in self.shapes().values()]] * self.hparams.n_layer
        scales = tf.constant([[[scale]] for _, scale in adapters], tf.float32)  # [batch, 1, 1]
        return [tuple((tf.gather(a, index), tf.gather(b, index) * scales) for a, b in block) for block in stacks]

    @staticmethod
    def _zeros(shape, rank):
        nx, nf = shape
        return tf.zeros([1, nx, rank], tf.float32), tf.zeros([1, rank, nf], tf.float32)


def _padded(stack, rank, axis):
    """`stack` with its rank axis (`axis`) padded with zeros to `rank`."""
    pad = rank - stack.shape[axis]
    if not pad:
        return stack
    return tf.pad(stack, [[0, 0]] + ([[0, pad], [0, 0]] if axis == 1 else [[0, 0], [0, pad]]))
