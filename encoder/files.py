"""Encoding a large text file on all cores with bounded memory.

This module owns `encode_file`: it streams a UTF-8 file in blocks, encodes the blocks in worker
processes with a bounded number in flight, and writes the ids in order as a flat little-endian
array. The result is token for token what `Encoder.encode` gives for the whole text, because
blocks are only cut where tokenisation cannot depend on the other side: just before a
whitespace character that follows a non-whitespace one. No pre-tokenisation match crosses such
a point (letters, digits, symbols and contractions never include whitespace, and a whitespace
match cannot start before a non-whitespace character), and the pattern has no look-behind, so
matching from the cut is the same with or without the text before it. A file with no such point
for a long stretch (no whitespace at all) is held in memory until one appears.
"""
import collections
import multiprocessing
import os

import numpy as np
import regex

from .bpe import Encoder

_LAST_SAFE_CUT = regex.compile(r"(?r)(?<=\S)\s")  # searched backwards: the last cut in a block
_worker_encoder = None


def _blocks(path, block_chars):
    """The file's text (universal newlines, invalid UTF-8 replaced) in blocks cut at safe points."""
    carry = ""
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:
        while True:
            data = f.read(block_chars)
            if not data:
                break
            text = carry + data
            cut = _LAST_SAFE_CUT.search(text)
            if cut is None:
                carry = text
                continue
            yield text[: cut.start()]
            carry = text[cut.start():]
    if carry:
        yield carry


def _init_worker(vocabulary, merges):
    global _worker_encoder
    _worker_encoder = Encoder(vocabulary, merges)


def _encode_block(text):
    return np.asarray(_worker_encoder.encode_ordinary(text), dtype=np.int64)


def encode_file(enc, path, out_path, *, processes=None, block_chars=1 << 20):
    """Encode the text file `path` into `out_path`, a flat array of token ids.

    Args:
        enc: an `Encoder`.
        path: a UTF-8 text file; `\\r\\n` and `\\r` read as `\\n`, invalid bytes as U+FFFD (as
            `open(..., errors='replace')` reads them).
        out_path: where the ids go: little-endian uint16 (int32 for vocabularies over 65536
            ids), written to `out_path + '.tmp'` and renamed when complete.
        processes: worker processes; None uses every core, 1 encodes in this process.
        block_chars: characters per block; memory use is a few blocks per worker.

    Returns:
        The number of tokens written.
    """
    processes = processes or os.cpu_count() or 1
    dtype = np.dtype("<u2") if len(enc.encoder) <= 65536 else np.dtype("<i4")
    tmp = out_path + ".tmp"
    count = 0
    with open(tmp, "wb") as out:
        def write(ids):
            nonlocal count
            out.write(np.asarray(ids).astype(dtype).tobytes())
            count += len(ids)

        if processes == 1:
            for block in _blocks(path, block_chars):
                write(enc.encode_ordinary(block))
        else:
            merges = sorted(enc.bpe_ranks, key=enc.bpe_ranks.get)
            # fork: workers run only this module's pure-Python code (never TensorFlow, whose
            # threads do not survive a fork), and unlike spawn it works from scripts that lack an
            # `if __name__ == "__main__":` guard.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            with context.Pool(processes, initializer=_init_worker, initargs=(enc.encoder, merges)) as pool:
                in_flight = collections.deque()
                for block in _blocks(path, block_chars):
                    in_flight.append(pool.apply_async(_encode_block, (block,)))
                    if len(in_flight) >= 2 * processes:
                        write(in_flight.popleft().get())
                while in_flight:
                    write(in_flight.popleft().get())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, out_path)
    return count
