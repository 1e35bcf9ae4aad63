"""Datasets: turn a dataset path into token chunks (gpt-2-simple's stream mode).

This module owns the step between text on disk and token ids in memory: resolving a dataset
path (a file, a directory or a glob), reading `.txt` / `.csv` / `.jsonl` / `.npz` files with
gpt-2-simple's rules (`load_dataset`), deciding which text files are large enough to go through
the token cache. It does not own drawing training windows from the chunks (`windows.py`),
decoding a file or splitting it into records (`records.py`), documents mode (`documents.py`), BPE itself (the `encoder` package), the token cache's files (`token_cache.py`),
the pre-encoding commands `encode_dataset` / `encode_csv` (`encoding.py`), batching into
tensors, or the training loop.

Text files are joined the way gpt-2-simple joins them: each file is appended to a text buffer;
once the buffer holds `combine` characters it is encoded as one chunk, otherwise the literal
text `<|endoftext|>` is appended (encoded as ordinary text: 7 tokens, not id 50256) and the next
file continues the buffer. CSV rows join the buffer as `<|startoftext|>` + first column +
`<|endoftext|>` + newline, and so do the `text_field` strings of `.jsonl` records. Two deliberate differences: invalid UTF-8 becomes U+FFFD with one
warning per file (upstream dropped it silently), and a text file larger than `LARGE_FILE_BYTES`
is its own chunk (it goes through the token cache and does not join the buffer; its bad-UTF-8
warning is given when it is encoded, not on later cache hits). An empty file adds nothing, not
even a separator.
"""
import codecs
import glob
import os

import numpy as np
import tqdm

from encoder.files import token_dtype

from . import token_cache
from .records import (  # noqa: F401
    SNIFF_BYTES,
    check_text,
    count_escaped,
    read_csv_column,
    read_jsonl,
    read_text,
    warn_bad_utf8,
)

LARGE_FILE_BYTES = 16 * 1024 * 1024  # text files above this size use the on-disk token cache
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


# ---------------------------------------------------------------------------------------------
# Which files a dataset path names


def resolve_paths(path):
    """The files a dataset path names, in a deterministic (sorted) order.

    Args:
        path: an existing file; a directory (every file under it, recursively, skipping hidden
            files and folders and token-cache files); or a glob pattern (`**` allowed).

    Returns:
        A list of file paths, sorted.

    Raises:
        FileNotFoundError: when nothing matches.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        found = _walk(path)
    else:
        found = []
        for match in glob.glob(path, recursive=True):
            found += _walk(match) if os.path.isdir(match) else [match]
    found = sorted(set(found))
    if not found:
        raise FileNotFoundError(
            f"dataset path {path!r} names no files; pass an existing file, a directory of "
            "files, or a glob pattern such as 'data/*.txt'"
        )
    return found


def _walk(folder):
    """Every non-hidden, non-cache file under `folder`."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, name)
            for name in sorted(files)
            if not name.startswith(".") and token_cache.CACHE_SUFFIX not in name
        ]
    return found


# ---------------------------------------------------------------------------------------------
# Reading one file (decoding and records: records.py)


def _rows_text(path, rows):
    """Rows of a CSV or JSON-lines file as training text: `<|startoftext|>` + row + `<|endoftext|>` each."""
    if not any(rows):
        where = ("in its first column (below the header row); put one document per row in the first column"
                 if path.endswith(".csv") else "in its records; put one {\"text\": ...} object per line")
        raise ValueError(f"dataset file {path!r} has no text {where}")
    return "".join(START_TOKEN + row + END_TOKEN + "\n" for row in rows)


def read_npz(path, n_vocab):
    """The token chunks of a pre-encoded `.npz` (one chunk per array), checked."""
    chunks = []
    with np.load(path, allow_pickle=False) as npz:
        for name in npz.files:
            try:
                tokens = npz[name]
            except ValueError:
                raise ValueError(
                    f"{path!r} array {name!r} holds Python objects; save token ids as integer "
                    "arrays (e.g. with encode_dataset)"
                ) from None
            if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
                raise ValueError(
                    f"{path!r} array {name!r} is {tokens.ndim}-D {tokens.dtype}; token chunks "
                    "must be 1-D integer arrays (e.g. written by encode_dataset)"
                )
            if tokens.size and (tokens.min() < 0 or tokens.max() >= n_vocab):
                raise ValueError(
                    f"{path!r} array {name!r} has token ids in [{tokens.min()}, {tokens.max()}], "
                    f"outside [0, {n_vocab}); re-encode it with this model's encoder"
                )
            chunks.append(tokens)
    return chunks


# ---------------------------------------------------------------------------------------------
# Large text files: through the token cache


def _large_file_tokens(enc, path, cache_dir, digest):
    """A large text file's tokens as a read-only memmap from the token cache, encoding it on
    first use (see `token_cache`); the text checks and the bad-UTF-8 warning are ours."""
    with open(path, "rb") as f:
        check_text(f.read(SNIFF_BYTES), path)
    entry = token_cache.cache_path(path, cache_dir, digest)
    if not os.path.exists(entry):
        warn_bad_utf8(path, count_bad_utf8(path))
        token_cache.write_entry(enc, path, entry)
    return token_cache.read_entry(enc, entry)


def count_bad_utf8(path):
    """The number of bytes in `path` that are not valid UTF-8, read in bounded blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    bad = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            bad += count_escaped(decoder.decode(block))
    return bad + count_escaped(decoder.decode(b"", final=True))


# ---------------------------------------------------------------------------------------------
# Path -> token chunks


def load_dataset(enc, path, combine=50000, *, cache_dir=None, text_field="text"):
    """Token chunks for a dataset path, with gpt-2-simple's joining rules.

    Args:
        enc: an `encoder.Encoder` (what `encoder.get_encoder(folder)` returns).
        path: a file, a directory or a glob (see `resolve_paths`). `.npz` files hold
            pre-encoded chunks; `.csv` files contribute the first column of each row (the
            header row is skipped), `.jsonl` files the `text_field` of each record; every
            other file is UTF-8 text.
        combine: text is encoded once the buffer of joined files reaches this many characters.
        cache_dir: folder for large files' token caches (default: $GPT2_SIMPLE_CACHE, else
            $XDG_CACHE_HOME/gpt2_simple or ~/.cache/gpt2_simple).
        text_field: the key of `.jsonl` records that holds the text.

    Returns:
        A list of 1-D integer arrays of token ids (uint16 for GPT-2's vocabulary); chunks from
        large text files are read-only `np.memmap`s.

    Raises:
        FileNotFoundError: when the path names no files.
        ValueError: for a binary file, a malformed `.npz`, `.csv` or `.jsonl`, or a dataset with no text.
    """
    n_vocab = len(enc.encoder)
    dtype = token_dtype(enc)
    chunks, buffer, digest = [], "", None
    print("Loading dataset...")
    for file in tqdm.tqdm(resolve_paths(path)):
        if file.endswith(".npz"):
            chunks += read_npz(file, n_vocab)
        elif file.endswith(".csv"):
            buffer += _rows_text(file, read_csv_column(file))
        elif file.endswith(".jsonl"):
            buffer += _rows_text(file, read_jsonl(file, text_field))
        elif os.path.getsize(file) > LARGE_FILE_BYTES:
            digest = digest or token_cache.vocab_digest(enc)
            chunks.append(_large_file_tokens(enc, file, cache_dir, digest))
        else:
            text = read_text(file)
            if not text:
                continue  # an empty file adds nothing, not even a separator
            buffer += text
            if len(buffer) >= combine:
                chunks.append(np.asarray(enc.encode(buffer), dtype=dtype))
                buffer = ""
            else:
                buffer += END_TOKEN
    if buffer:
        chunks.append(np.asarray(enc.encode(buffer), dtype=dtype))
    chunks = [chunk for chunk in chunks if len(chunk)]
    total = sum(len(chunk) for chunk in chunks)
    if not total:
        raise ValueError(f"dataset {os.fspath(path)!r} has no tokens; pass files that contain text")
    print(f"dataset has {total} tokens")
    return chunks
