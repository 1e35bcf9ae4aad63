"""Datasets: turn a dataset path into token chunks, and draw training windows from them.

This module owns the step between text on disk and token ids in memory: resolving a dataset
path (a file, a directory or a glob), reading `.txt` / `.csv` / `.npz` files with
gpt-2-simple's rules (`load_dataset`), a token cache on disk for large text files (encoded once
in parallel, read back as `np.memmap` so memory stays bounded), the seeded `Sampler` that draws
training windows from inside one chunk, and the helpers `encode_dataset` and `encode_csv`.
It does not own BPE itself (the `encoder` package), batching into tensors, or the training loop.

Text files are joined the way gpt-2-simple joins them: each file is appended to a text buffer;
once the buffer holds `combine` characters it is encoded as one chunk, otherwise the literal
text `<|endoftext|>` is appended (encoded as ordinary text: 7 tokens, not id 50256) and the next
file continues the buffer. CSV rows join the buffer as `<|startoftext|>` + first column +
`<|endoftext|>` + newline. Two deliberate differences: invalid UTF-8 becomes U+FFFD with one
warning per file (upstream dropped it silently), and a text file larger than `LARGE_FILE_BYTES`
is its own chunk (it goes through the token cache and does not join the buffer; its bad-UTF-8
warning is given when it is encoded, not on later cache hits). An empty file adds nothing, not
even a separator.
"""
import codecs
import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import re
import tempfile
import warnings

import numpy as np
import tqdm

import encoder as bpe

LARGE_FILE_BYTES = 16 * 1024 * 1024  # text files above this size use the on-disk token cache
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"

_BYTES_PER_PROCESS = 4 * 1024 * 1024  # encode large files with one worker per this many bytes
_SNIFF_BYTES = 8192  # a NUL byte in this many leading bytes marks a file as binary
_CACHE_SUFFIX = ".gpt2tok"  # our token-cache files; never read back as dataset files
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of one bad byte


# ---------------------------------------------------------------------------------------------
# Which files a dataset path names


def resolve_paths(path):
    """The files a dataset path names, in a deterministic (sorted) order.

    Args:
        path: an existing file; a directory (every file under it, recursively, skipping hidden
            files and folders and this module's cache files); or a glob pattern (`**` allowed).

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
            if not name.startswith(".") and _CACHE_SUFFIX not in name
        ]
    return found


# ---------------------------------------------------------------------------------------------
# Reading one file


def read_text(path):
    """A text file's contents, decoded like gpt-2-simple but without silent data loss.

    Newlines are normalised to `\\n` (Python's universal newlines, as upstream's `open()` did).
    Invalid UTF-8 becomes U+FFFD, with one `UnicodeWarning` per file naming the file and the
    number of bad bytes.

    Raises:
        ValueError: when the file is binary (a NUL byte in its first 8 KiB).
    """
    with open(path, "rb") as f:
        raw = f.read()
    _check_text(raw[:_SNIFF_BYTES], path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _warn_bad_utf8(path, len(_ESCAPED_BYTE.findall(raw.decode("utf-8", "surrogateescape"))))
        text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _warn_bad_utf8(path, bad):
    if bad:
        warnings.warn(
            f"{path}: {bad} invalid UTF-8 byte(s) replaced with U+FFFD; re-save the file as "
            "UTF-8 to keep those characters",
            UnicodeWarning,
            stacklevel=3,
        )


def _check_text(head, path):
    if b"\0" in head:
        raise ValueError(
            f"dataset file {path!r} is not a text file (it contains NUL bytes); "
            "pass .txt/.csv/.npz files"
        )


def read_csv_column(path, header=True):
    """The first-column values of a CSV file's rows (quoted multi-line cells allowed).

    Args:
        path: the CSV file (UTF-8; decoded as by `read_text`).
        header: skip the first record.

    Returns:
        A list of strings, one per non-blank row after the header.

    Raises:
        ValueError: when the file is binary or not parseable as CSV.
    """
    reader = csv.reader(io.StringIO(read_text(path)))
    try:
        if header:
            next(reader, None)
        return [row[0] for row in reader if row]
    except csv.Error as error:
        raise ValueError(
            f"CSV file {path!r} cannot be parsed near line {reader.line_num} ({error}); "
            "fix the file or pass it as .txt"
        ) from None


def _csv_text(path):
    """A CSV file as training text: `<|startoftext|>` + first column + `<|endoftext|>` per row."""
    rows = read_csv_column(path)
    if not any(rows):
        raise ValueError(
            f"CSV file {path!r} has no text in its first column (below the header row); "
            "put one document per row in the first column"
        )
    return "".join(START_TOKEN + row + END_TOKEN + "\n" for row in rows)


def _load_npz(path, n_vocab):
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
# The token cache for large text files


def cache_root(cache_dir=None):
    """Where token caches live: `cache_dir`, else $GPT2_SIMPLE_CACHE, else the user cache."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("GPT2_SIMPLE_CACHE"):
        return os.environ["GPT2_SIMPLE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpt2_simple")


def _vocab_digest(enc):
    """sha256 of the encoder's vocabulary and merges, so a cache never mixes vocabularies."""
    merges = sorted(enc.bpe_ranks, key=enc.bpe_ranks.get)
    digest = hashlib.sha256(json.dumps(enc.encoder, sort_keys=True).encode("utf-8"))
    digest.update("\n".join(" ".join(pair) for pair in merges).encode("utf-8"))
    return digest.hexdigest()


def _cached_tokens(enc, path, cache_dir, vocab_digest):
    """A large text file's tokens as a read-only memmap, encoding it on first use.

    The cache key covers the file (absolute path, size, mtime) and the vocabulary, so editing
    the file or switching vocabularies re-encodes. The cache file appears atomically.
    """
    with open(path, "rb") as f:
        _check_text(f.read(_SNIFF_BYTES), path)
    stat = os.stat(path)
    key = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, vocab_digest])
    root = cache_root(cache_dir)
    os.makedirs(root, exist_ok=True)
    cache_path = os.path.join(root, hashlib.sha256(key.encode("utf-8")).hexdigest() + _CACHE_SUFFIX)
    if not os.path.exists(cache_path):
        _warn_bad_utf8(path, _count_bad_utf8(path))
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-", suffix=_CACHE_SUFFIX)
        os.close(fd)
        try:
            _encode_file(enc, path, tmp)
            os.replace(tmp, cache_path)
        finally:
            for leftover in (tmp, tmp + ".tmp"):  # ours, and encode_file's own temporary
                if os.path.exists(leftover):
                    os.remove(leftover)
    dtype = "<u2" if len(enc.encoder) <= 65536 else "<i4"  # what encode_file writes
    if os.path.getsize(cache_path) == 0:
        return np.zeros(0, dtype)
    return np.memmap(cache_path, dtype=dtype, mode="r")


def _encode_file(enc, path, out_path):
    """Encode a text file into a flat little-endian token file, on up to every core.

    `encoder.encode_file` reads text exactly as `read_text` does (universal newlines, U+FFFD
    for invalid UTF-8) and gives the same ids as `enc.encode` of the whole text.
    """
    processes = max(1, min(os.cpu_count() or 1, os.path.getsize(path) // _BYTES_PER_PROCESS))
    bpe.encode_file(enc, path, out_path, processes=processes)


def _count_bad_utf8(path):
    """The number of bytes in `path` that are not valid UTF-8, read in bounded blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    bad = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            bad += len(_ESCAPED_BYTE.findall(decoder.decode(block)))
    return bad + len(_ESCAPED_BYTE.findall(decoder.decode(b"", final=True)))


# ---------------------------------------------------------------------------------------------
# Path -> token chunks


def load_dataset(enc, path, combine=50000, *, cache_dir=None):
    """Token chunks for a dataset path, with gpt-2-simple's joining rules.

    Args:
        enc: an `encoder.Encoder` (what `encoder.get_encoder(folder)` returns).
        path: a file, a directory or a glob (see `resolve_paths`). `.npz` files hold
            pre-encoded chunks; `.csv` files contribute the first column of each row (the
            header row is skipped); every other file is UTF-8 text.
        combine: text is encoded once the buffer of joined files reaches this many characters.
        cache_dir: folder for large files' token caches (default: $GPT2_SIMPLE_CACHE, else
            $XDG_CACHE_HOME/gpt2_simple or ~/.cache/gpt2_simple).

    Returns:
        A list of 1-D integer arrays of token ids (uint16 for GPT-2's vocabulary); chunks from
        large text files are read-only `np.memmap`s.

    Raises:
        FileNotFoundError: when the path names no files.
        ValueError: for a binary file, a malformed `.npz` or `.csv`, or a dataset with no text.
    """
    n_vocab = len(enc.encoder)
    dtype = np.uint16 if n_vocab <= 65536 else np.int32
    chunks, buffer, digest = [], "", None
    print("Loading dataset...")
    for file in tqdm.tqdm(resolve_paths(path)):
        if file.endswith(".npz"):
            chunks += _load_npz(file, n_vocab)
        elif file.endswith(".csv"):
            buffer += _csv_text(file)
        elif os.path.getsize(file) > LARGE_FILE_BYTES:
            digest = digest or _vocab_digest(enc)
            chunks.append(_cached_tokens(enc, file, cache_dir, digest))
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


# ---------------------------------------------------------------------------------------------
# Token chunks -> training windows


class Sampler:
    """Draws training windows uniformly from inside token chunks, reproducibly.

    Every window lies inside one chunk, and every valid (chunk, start) position is equally
    likely: the start is drawn as an index into the cumulative count of valid starts (upstream
    used rejection sampling and refused datasets whose average chunk was shorter than the
    context). The random stream is a PCG64 generator whose state can be saved and restored.

    Attributes:
        chunks: the token chunks (1-D integer arrays).
        total_size: the number of tokens in all chunks.
        longest: the longest chunk's length; the trainer's window is `min(n_ctx, longest)`.
    """

    def __init__(self, chunks, seed=None):
        """Args: chunks: 1-D integer arrays of token ids; seed: int seed, or None for entropy."""
        self.chunks = [chunk for chunk in chunks if len(chunk)]
        if not self.chunks:
            raise ValueError("Sampler got no tokens; pass non-empty chunks from load_dataset")
        self._lengths = np.array([len(chunk) for chunk in self.chunks], dtype=np.int64)
        self.total_size = int(self._lengths.sum())
        self.longest = int(self._lengths.max())
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._cumulative = (None, None)  # (length, cumulative count of valid starts per chunk)

    def sample(self, length):
        """One window: `length` consecutive tokens from one chunk, as an int32 array [length].

        Raises:
            ValueError: when `length` is not in [1, longest].
        """
        length = int(length)
        if not 1 <= length <= self.longest:
            raise ValueError(
                f"sample length {length} must be in [1, {self.longest}] (the longest chunk); "
                "use a window of min(n_ctx, sampler.longest) tokens"
            )
        if self._cumulative[0] != length:
            starts = np.maximum(self._lengths - length + 1, 0)  # valid starts per chunk
            self._cumulative = (length, np.cumsum(starts))
        cumulative = self._cumulative[1]
        index = int(self._rng.integers(cumulative[-1]))
        chunk = int(np.searchsorted(cumulative, index, side="right"))
        start = index - (int(cumulative[chunk - 1]) if chunk else 0)
        return np.asarray(self.chunks[chunk][start : start + length], dtype=np.int32)

    def sample_batch(self, batch_size, length):
        """`batch_size` windows (successive `sample` draws) as an int32 array [batch, length]."""
        return np.stack([self.sample(length) for _ in range(int(batch_size))])

    def get_state(self):
        """The random generator's state as a JSON-serialisable dict (for resuming a run)."""
        return json.loads(json.dumps(self._rng.bit_generator.state))

    def set_state(self, state):
        """Restore a state from `get_state`, so the same windows follow as in the saved run.

        Raises:
            ValueError: when `state` is not a PCG64 state dict.
        """
        if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
            raise ValueError(
                f"sampler state must be a dict from Sampler.get_state() (a PCG64 state), "
                f"got {str(state)[:80]!r}"
            )
        self._rng.bit_generator.state = state


# ---------------------------------------------------------------------------------------------
# gpt-2-simple's helpers


def encode_dataset(file_path, model_dir="models", out_path="text_encoded.npz", model_name="124M",
                   combine=50000):
    """Encode a dataset once and save its token chunks as `.npz` (arrays `arr_0`, `arr_1`, ...).

    Pass the `.npz` to `finetune` as its dataset to skip encoding on every run.

    Args:
        file_path: a file, directory or glob, as for `load_dataset`.
        model_dir: folder holding the downloaded models.
        out_path: where to write; `.npz` is appended when missing (as `np.savez` does).
        model_name: which model's vocabulary to use (`model_dir/model_name`).
        combine: see `load_dataset`.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: when the model's vocabulary or the dataset is missing.
    """
    model_path = os.path.join(model_dir, model_name)
    if not os.path.isfile(os.path.join(model_path, "encoder.json")):
        raise FileNotFoundError(
            f"{model_path} has no encoder.json; run download_gpt2(model_name={model_name!r}) first"
        )
    enc = bpe.get_encoder(model_path)
    print("Reading files")
    chunks = load_dataset(enc, file_path, combine)
    out_path = os.fspath(out_path)
    if not out_path.endswith(".npz"):
        out_path += ".npz"
    print("Writing", out_path)
    dtype = np.uint16 if len(enc.encoder) <= 65536 else np.int32
    with _atomic(out_path, "wb") as f:
        np.savez_compressed(f, *[np.asarray(chunk, dtype=dtype) for chunk in chunks])
    return out_path


def encode_csv(csv_path, out_path="csv_encoded.txt", header=True, start_token="<|startoftext|>",
               end_token="<|endoftext|>"):
    """Write a CSV's first column as a text dataset: `start_token + text + end_token` per line.

    Args:
        csv_path: the CSV file (UTF-8; quoted multi-line cells allowed).
        out_path: the UTF-8 text file to write.
        header: skip the CSV's first row.
        start_token, end_token: written around each row's text.

    Returns:
        `out_path`.
    """
    rows = read_csv_column(csv_path, header=header)
    with _atomic(out_path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(start_token + row + end_token + "\n")
    return out_path


@contextlib.contextmanager
def _atomic(path, mode, **kwargs):
    """Write to a temporary file beside `path`; rename it to `path` only when writing succeeds."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
