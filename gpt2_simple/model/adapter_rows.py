"""Many LoRA adapters over one frozen base, chosen per row: the table of adapters and a batch's rows of them.

This module owns serving several fine-tunes of one base at once. An `AdapterTable` keeps, for
every adaptable matrix, all adapters side by side: A `[nx, P * R]` and B `[P * R, nf]`, position p
holding one adapter's A `[nx, r]` and its scale (alpha / r) times B `[r, nf]` in columns (rows)
p * R.. (position 0: zeros, the base alone; ranks padded with zeros to R, the largest held).
`rows(adapters)`, for a batch whose row i wants adapter slot s_i at scale c_i, gives those and a
mask `[batch, P * R]`: c_i on row i's columns, 0 elsewhere. `GPT2.forward` and `columns.step` add
`((x @ A) * mask) @ B` (`lora.row_update`): each row gets only its adapter's update (the others'
terms are exact zeros), the base matrices and every adapter are read once a step for all rows, and
mixing adapters costs only these narrow products. `W + A @ B` is never formed. Reading adapters
from run folders is `formats/adapters.py`'s; which request uses which slot is the server's.
"""
import threading

import numpy as np
import tensorflow as tf

from .lora import LAYER_PATHS, TARGETS

BASE = (0, 1.0)  # (slot, scale) of a row of the base model alone


class AdapterTable:
    """The adapters one base serves, by slot (1, 2, ...; 0 is the base alone).

    The side-by-side matrices are variables sized for `capacity` adapters of rank up to `rank`
    from the start (the runs a server opens). An adapter is written into a free position in place,
    and removing one zeroes and frees its position; they are made again only when full (then with
    twice the room) or when a larger rank arrives, and the compiled loops then compile once more.
    """

    def __init__(self, hparams, *, capacity=1, rank=1):
        self.hparams = hparams
        self.positions = {0: 0}  # slot -> its position
        self.ranks = {}  # slot -> its own rank
        self._next = 1
        self._room, self._rank = capacity, rank  # adapters the matrices hold, and R
        self._matrices = None  # [(A, B) variables per target in TARGETS order] per block
        self._make(capacity, rank)  # before the first compile: the loops then keep one shape until the table grows
        self.version = 0  # changes with every add and remove
        self._lock = threading.Lock()

    def shapes(self):
        """`{target: (nx, nf)}` of the base's adaptable matrices."""
        e = self.hparams.n_embd
        return {"c_attn": (e, 3 * e), "attn/c_proj": (e, e), "c_fc": (e, 4 * e), "mlp/c_proj": (4 * e, e)}

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
            full = position > self._room
            if full or config.rank > self._rank:
                self._make(max(self._room, 2 * self._room if full else 0, position), max(self._rank, config.rank))
            columns = slice(position * self._rank, position * self._rank + self._rank)
            for i, block in enumerate(self._matrices):
                for target, (a_all, b_all) in zip(TARGETS, block):
                    a, b = self._padded_pair(config, arrays, i, target)
                    a_all[:, columns].assign(a)
                    b_all[columns].assign(b)
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
        """(Re)make the matrices for `room` adapters of rank up to `rank`, keeping what they hold."""
        made, old_rank, positions = [], self._rank, self._room + 1
        for i in range(self.hparams.n_layer):
            pairs = []
            for t, (nx, nf) in enumerate(self.shapes().values()):
                a = np.zeros([nx, room + 1, rank], np.float32)
                b = np.zeros([room + 1, rank, nf], np.float32)
                if self._matrices is not None:
                    old_a, old_b = (v.numpy() for v in self._matrices[i][t])
                    a[:, :positions, :old_rank] = old_a.reshape(nx, positions, old_rank)
                    b[:positions, :old_rank] = old_b.reshape(positions, old_rank, nf)
                pairs.append((tf.Variable(a.reshape(nx, -1), trainable=False),
                              tf.Variable(b.reshape(-1, nf), trainable=False)))
            made.append(pairs)
        self._matrices, self._room, self._rank = made, room, rank

    def remove(self, slot):
        """Drop the adapter in `slot` (its rows must have ended): its position is zeroed and free again."""
        with self._lock:
            if slot not in self.ranks:
                return
            position = self.positions.pop(slot)
            del self.ranks[slot]
            columns = slice(position * self._rank, position * self._rank + self._rank)
            for block in self._matrices:
                for a_all, b_all in block:
                    a_all[:, columns].assign(tf.zeros([a_all.shape[0], self._rank]))
                    b_all[columns].assign(tf.zeros([self._rank, b_all.shape[1]]))
            self.version += 1

    def specs(self):
        """The `tf.TensorSpec`s of `rows`' result, for a compiled signature (any batch, positions and rank)."""
        shapes = self.shapes()
        mask = tf.TensorSpec([None, None], tf.float32)
        block = tuple((tf.TensorSpec([nx, None], tf.float32), tf.TensorSpec([None, nf], tf.float32), mask)
                      for nx, nf in (shapes[t] for t in TARGETS))
        return [block] * self.hparams.n_layer

    def rows(self, adapters):
        """A batch's adapters: `adapters` lists (slot, scale) a row (`BASE`: none).

        Returns:
            one 4-tuple a block, of (A `[nx, P * R]`, B `[P * R, nf]`, mask `[batch, P * R]`) for c_attn, attn
            c_proj, c_fc and mlp c_proj: what `GPT2.forward(adapters=)` takes. A slot no longer held (an
            ended row's: a live row's adapter is removed only once it has ended) gets the base's zeros.
        """
        with self._lock:  # `add` and `remove` may come from another thread (the server's adapter routes)
            index = [self.positions.get(slot, 0) for slot, _ in adapters]
            matrices, rank, positions = self._matrices, self._rank, self._room + 1
        mask = np.zeros([len(adapters), positions, rank], np.float32)
        for row, (position, (_, scale)) in enumerate(zip(index, adapters)):
            mask[row, position] = scale if position else 0.0
        mask = tf.constant(mask.reshape(len(adapters), -1))
        return [tuple((a, b, mask) for a, b in block) for block in matrices]

