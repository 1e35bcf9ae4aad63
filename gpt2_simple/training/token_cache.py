"""The on-disk token cache for large dataset text files: encode once, read back as a memmap.

This module owns where token caches live (`cache_root`), the cache key (the file's absolute
path, size and mtime, plus a digest of the vocabulary, so editing the file or switching
vocabularies re-encodes), encoding a file into its cache entry in parallel and atomically, and
reading an entry back as a read-only `np.memmap` so memory stays bounded. It does not decide
which files are large, check that a file is text or warn about bad UTF-8 (`dataset.py` does,
before it asks for an entry), and it does not own BPE itself (the `encoder` package).
"""
import hashlib
import json
import os

import numpy as np

import encoder as bpe
from encoder.files import token_dtype

from ..atomic import staged_path

CACHE_SUFFIX = ".gpt2tok"  # our token-cache files; never read back as dataset files

_BYTES_PER_PROCESS = 4 * 1024 * 1024  # encode large files with one worker per this many bytes


def cache_root(cache_dir=None):
    """Where token caches live: `cache_dir`, else $GPT2_SIMPLE_CACHE, else the user cache."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("GPT2_SIMPLE_CACHE"):
        return os.environ["GPT2_SIMPLE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpt2_simple")


def vocab_digest(enc):
    """sha256 of the encoder's vocabulary and merges, so a cache never mixes vocabularies."""
    merges = sorted(enc.bpe_ranks, key=enc.bpe_ranks.get)
    digest = hashlib.sha256(json.dumps(enc.encoder, sort_keys=True).encode("utf-8"))
    digest.update("\n".join(" ".join(pair) for pair in merges).encode("utf-8"))
    return digest.hexdigest()


def cache_path(path, cache_dir, digest):
    """The cache entry for text file `path` under `digest` (creating the cache folder)."""
    stat = os.stat(path)
    key = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, digest])
    root = cache_root(cache_dir)
    os.makedirs(root, exist_ok=True)
    return os.path.join(root, hashlib.sha256(key.encode("utf-8")).hexdigest() + CACHE_SUFFIX)


def write_entry(enc, path, entry):
    """Encode text file `path` into the cache entry `entry`, which appears atomically."""
    with staged_path(entry) as tmp:
        _encode_file(enc, path, tmp)  # encode_file removes its own temporary on an error


def _encode_file(enc, path, out_path):
    """Encode a text file into a flat little-endian token file, on up to every core.

    `encoder.encode_file` reads text exactly as `dataset.read_text` does (universal newlines,
    U+FFFD for invalid UTF-8) and gives the same ids as `enc.encode` of the whole text.
    """
    processes = max(1, min(os.cpu_count() or 1, os.path.getsize(path) // _BYTES_PER_PROCESS))
    bpe.encode_file(enc, path, out_path, processes=processes)


def read_entry(enc, entry):
    """A cache entry's tokens as a read-only memmap (an empty array for an empty entry)."""
    dtype = token_dtype(enc)  # what encode_file writes
    if os.path.getsize(entry) == 0:
        return np.zeros(0, dtype)
    return np.memmap(entry, dtype=dtype, mode="r")
