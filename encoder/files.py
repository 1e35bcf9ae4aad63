"""Encoding a large text file on all cores with bounded memory.

This module owns `encode_file`: it streams a UTF-8 file in blocks, encodes the blocks in worker
processes with a bounded number in flight, and writes the ids in order as a flat little-endian
array. The result is token for token what `Encoder.encode` gives for the whole text, because a
block ends only at a *safe cut* (`last_safe_cut`), a point where the pretokenizer's pieces are
the same whether or not the text on the other side is there.

Why the cuts are safe. Call the classes letter (`\\p{L}`), number (`\\p{N}`), whitespace (`\\s`)
and other (everything else). A cut at p is taken only when text[p-1] is not whitespace, text[p]
is of another class than text[p-1], and the two are not an apostrophe followed by a letter.
Every piece that holds a non-whitespace character is a one-class run (with at most one space,
at its start) or a contraction (`'s`, `'ll`, ...: an apostrophe and letters). So the piece that
holds text[p-1] ends at p: it could only go on through a character of its own class or, after
an apostrophe, a letter. While matching before p, the pattern asks of text[p] only "same class?"
or "next letter of a contraction?", which it answers "no" just as the end of the text would; no
whitespace run reaches p, since text[p-1] is not whitespace. And the pattern has no look-behind,
so the pieces from p on are found the same without the text before p. Hence
`encode(text) == encode(text[:p]) + encode(text[p:])`. Cutting elsewhere is not safe:
"a b" is [64, 275] but "a " + "b" is [64, 220, 65]. Text with no safe cut for a long stretch
(one run of letters or of whitespace) is held in memory until a cut appears.
"""
import collections
import contextlib
import multiprocessing
import os

import numpy as np
import regex

# Searched backwards ((?r)) from the end of a block: the match ends at the last safe cut.
_LAST_SAFE_CUT = regex.compile(
    r"(?r)\p{L}(?=\P{L})"  # a letter, then a non-letter
    r"|\p{N}(?=\P{N})"  # a number, then a non-number
    r"|'(?=[\s\p{N}])"  # an apostrophe, then whitespace or a number (a letter may be 's, 'll...)
    r"|[^\s\p{L}\p{N}'](?=[\s\p{L}\p{N}])"  # another symbol, then whitespace, letter or number
)
_worker_encoder = None


def last_safe_cut(text, start=0):
    """The last safe cut p in `text` with start < p < len(text), or 0 if there is none.

    At a safe cut, `encode(text) == encode(text[:p]) + encode(text[p:])` (see the module
    docstring for why). The check looks only at text[p-1] and text[p].
    """
    match = _LAST_SAFE_CUT.search(text, start)
    return match.end() if match else 0


def token_dtype(enc):
    """The file format of `encode_file`: little-endian uint16, or int32 past 65536 ids."""
    return np.dtype("<u2") if len(enc.encoder) <= 65536 else np.dtype("<i4")


@contextlib.contextmanager
def open_atomic(path, mode, **kwargs):
    """Write `path + '.tmp'`, fsync it and rename it to `path` only when the block succeeds.

    The encoder's own copy of the library's atomic write (this package imports nothing from
    `gpt2_simple`): when the block raises, the temporary file is removed and `path` is left as
    it was.

    Args:
        path: the file to replace.
        mode, kwargs: as for `open` (a writing mode: `"w"`, `"wb"`).

    Yields:
        The open temporary file.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only when something failed before the rename
            os.remove(tmp)


def _blocks(path, block_chars):
    """The file's text (universal newlines, invalid UTF-8 replaced) in blocks cut at safe points."""
    carry = ""
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:
        while True:
            data = f.read(block_chars)
            if not data:
                break
            text = carry + data
            # Only the new text (and the pair where it joins the carry) can hold a new cut, so
            # a long stretch without one is searched once, not once per block.
            cut = last_safe_cut(text, start=max(0, len(carry) - 1))
            if cut:
                yield text[:cut]
                carry = text[cut:]
            else:
                carry = text
    if carry:
        yield carry


def _init_worker(enc):
    global _worker_encoder
    _worker_encoder = enc


def _encode_in_worker(text):
    return _encode_block(_worker_encoder, text)


def _encode_block(enc, text):
    return np.asarray(enc.encode_ordinary(text), dtype=token_dtype(enc))


def _encoded_blocks(enc, path, processes, block_chars):
    """The token arrays of the file's blocks, in file order, at most 2 * processes in flight."""
    if processes == 1:
        for block in _blocks(path, block_chars):
            yield _encode_block(enc, block)
        return
    # fork: workers run only this package's pure-Python code (never TensorFlow, whose threads
    # do not survive a fork), they share the parent's warm piece cache, and unlike spawn it
    # works from scripts without an `if __name__ == "__main__":` guard.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(processes, initializer=_init_worker, initargs=(enc,)) as pool:
        in_flight = collections.deque()
        for block in _blocks(path, block_chars):
            in_flight.append(pool.apply_async(_encode_in_worker, (block,)))
            if len(in_flight) >= 2 * processes:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def encode_file(enc, path, out_path, *, processes=None, block_chars=1 << 20):
    """Encode the text file `path` into `out_path`, a flat array of token ids.

    The ids equal `enc.encode(text)` of the whole file, where text is what
    `open(path, encoding='utf-8', errors='replace').read()` returns: `\\r\\n` and `\\r` read as
    `\\n`, and bytes that are not valid UTF-8 as U+FFFD.

    Args:
        enc: an `Encoder`; worker processes get a copy of it (forked, or pickled where fork
            is unavailable), never a global set at import.
        path: a UTF-8 text file.
        out_path: where the ids go: little-endian uint16 (int32 for vocabularies over 65536
            ids), written to `out_path + '.tmp'` and renamed when complete; on an error the
            temporary file is removed and `out_path` is left as it was.
        processes: worker processes; None uses every core, 1 encodes in this process.
        block_chars: characters per block; memory use is about two blocks per worker.

    Returns:
        The number of tokens written.
    """
    processes = processes or os.cpu_count() or 1
    count = 0
    with open_atomic(out_path, "wb") as out:
        for ids in _encoded_blocks(enc, path, processes, block_chars):
            out.write(ids.tobytes())
            count += len(ids)
    return count
