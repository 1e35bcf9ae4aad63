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

    Each adaptable matrix keeps every adapter stacked in a variable, `A` `[positions, nx, R]` and `B`
    `[positions, R, nf]` (position 0: zeros, the base alone), so a batch's rows are one gather a
    matrix. An adapter is written into a free position in place, and removing one frees its
    position: the stacks are made again only when they are full (then with twice the room) or a
    larger rank arrives. `capacity` and `rank` size them from the start (the runs a server opens).
    """

    def __init__(self, hparams, *, capacity=1, rank=1):
        self.hparams = hparams
        self.positions = {0: 0}  # slot -> its position in the stacks
        self.ranks = {}  # slot -> its own rank
        self._next = 1
        self._room, self._rank = capacity, rank  # the stacks' adapters and R, once made
        self._stacks = None  # [(A, B) variables per target in TARGETS order] per block; None: no adapter yet
        self.version = 0  # changes with every add and remove
        self._lock = threading.Lock()

    def shapes(self):
        """`{target: (nx, nf)}` of the base's adaptable matrices."""
        e = self.hparams.n_embd
        return {"c_attn": (e, 3 * e), "attn/c_proj": (e, e), "c_fc": (e, 4 * e), "mlp/c_proj": (4 * e, e)}

    @property
    def rank(self):
        """R, the rank every adapter is padded to."""
        return self._rank

    def add(self, config, arrays, *, source):
        """Hold the adapters `arrays` (`{name: array}`, `model/h0/attn/c_attn/lora_A`, ...) of `config` (a
        `lora.LoRAConfig`); returns their slot. A ValueError names `source` when they do not fit this base."""
        shapes = self.shapes()
        for i in range(self.hparams.n_layer):  # every matrix checked before anything is written
            for target in config.targets:
                a, b = (arrays.get(f"model/h{i}/{LAYER_PATHS[target]}/lora_{x}") for x in "AB")
                nx, nf = shapes[target]
                if a is None or b is None or a.shape != (nx, config.rank) or b.shape != (config.rank, nf):
                    raise ValueError(f"{source}: the adapter of layer h{i} {target} is missing or shaped for "
                                     f"another model than this base (n_embd={self.hparams.n_embd}, "
                                     f"n_layer={self.hparams.n_layer})")
        with self._lock:
            taken = set(self.positions.values())
            position = next(p for p in range(len(taken) + 1) if p not in taken)
            if self._stacks is None or config.rank > self._rank or position > self._room:
                self._make(max(self._room, 2 * self._room if self._stacks is not None and position > self._room else 0,
                               position), max(self._rank, config.rank))
            for i, block in enumerate(self._stacks):
                for target, (a_stack, b_stack) in zip(TARGETS, block):
                    a, b = self._padded_pair(config, arrays, i, target)
                    a_stack[position].assign(a)
                    b_stack[position].assign(b)
            slot, self._next = self._next, self._next + 1
            self.positions[slot], self.ranks[slot] = position, config.rank
            self.version += 1
        return slot

    def _padded_pair(self, config, arrays, block, target):
        """(A `[nx, R]`, scale * B `[R, nf]`) of one matrix of an adapter, zeros where it has none or past its rank."""
        nx, nf = self.shapes()[target]
        a, b = np.zeros([nx, self._rank], np.float32), np.zeros([self._rank, nf], np.float32)
        if target in config.targets:
            path = f"model/h{block}/{LAYER_PATHS[target]}"
            a[:, :config.rank] = arrays[path + "/lora_A"]
            b[:config.rank] = np.asarray(arrays[path + "/lora_B"], np.float32) * np.float32(config.scale)
        return a, b

    def _make(self, room, rank):
        """(Re)make the stacks for `room` adapters of rank up to `rank`, keeping what they hold."""
        made = []
        for i in range(self.hparams.n_layer):
            pairs = []
            for t, (nx, nf) in enumerate(self.shapes().values()):
                a, b = np.zeros([room + 1, nx, rank], np.float32), np.zeros([room + 1, rank, nf], np.float32)
                if self._stacks is not None:
                    old_a, old_b = (v.numpy() for v in self._stacks[i][t])
                    a[:len(old_a), :, :old_a.shape[2]], b[:len(old_b), :old_b.shape[1]] = old_a, old_b
                pairs.append((tf.Variable(a, trainable=False), tf.Variable(b, trainable=False)))
            made.append(pairs)
        self._stacks, self._room, self._rank = made, room, rank

    def remove(self, slot):
        """Drop the adapter in `slot` (its rows must have ended): its position is zeroed and free again."""
        with self._lock:
            if slot not in self.ranks:
                return
            position = self.positions.pop(slot)
            del self.ranks[slot]
            for block in self._stacks:
                for a_stack, b_stack in block:
                    a_stack[position].assign(tf.zeros(a_stack.shape[1:]))
                    b_stack[position].assign(tf.zeros(b_stack.shape[1:]))
            self.version += 1

    def __contains__(self, slot):
        return slot in self.positions

    def nbytes(self):
        """The bytes the stacks hold (every position, the base's zeros included)."""
        return sum(int(np.prod(v.shape)) * 4 for block in self._stacks or () for pair in block for v in pair)

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
            stacks = self._stacks or [[_zeros(shape) for shape in self.shapes().values()]] * self.hparams.n_layer
        scales = tf.constant([[[scale]] for _, scale in adapters], tf.float32)  # [batch, 1, 1]
        return [tuple((tf.gather(a, index), tf.gather(b, index) * scales) for a, b in block) for block in stacks]



def _zeros(shape):
    """Stacks of the base alone: (A `[1, nx, 1]`, B `[1, 1, nf]`) of zeros."""
    nx, nf = shape
    return tf.zeros([1, nx, 1], tf.float32), tf.zeros([1, 1, nf], tf.float32)
