"""Documents mode (`line_by_line=True`): one document per line, row or record, and windows that start at one.

This module owns the other way from files to training windows. Each non-empty line of a text
file, the first column of each CSV row (after the header) and the `text_field` of each JSON-lines
record is one document. Documents are encoded one by one and joined into a stream with the
single end-of-text id (50256 for GPT-2) in front of each:

    [eot] doc 1 [eot] doc 2 ... [eot] doc n        # one chunk; read as a ring, doc n -> [eot] doc 1

so every separator is one token, and a literal `<|endoftext|>` inside a document stays ordinary
text. Its windows (`windows.WindowSampler` with `eot=`) begin at a separator, so the model learns to
start a document after end-of-text and to end one with it; a document longer than the window is
cut into window-sized pieces, each of which is a start, so nothing is dropped. A text file larger
than `dataset.LARGE_FILE_BYTES` is encoded line by line into the token cache under a key that
includes the mode, and read back memory-mapped. `.npz` files (e.g. `encode_dataset(...,
line_by_line=True)`) are read as such streams. Stream mode, gpt-2-simple's, is `dataset.py`'s.
"""
import os

import numpy as np
import tqdm

from encoder.files import token_dtype

from ..atomic import open_atomic
from . import chats, token_cache
from . import dataset as dataset_module
from .packing import ExampleSampler
from .records import SNIFF_BYTES, read_csv_column, read_jsonl, read_lines
from .windows import WindowSampler, separator_positions

_MODE_KEY = "line_by_line"  # added to the token-cache key, so the two modes never share an entry
_BLOCK_TOKENS = 1 << 20  # large files are written this many tokens at a time


def load_documents(enc, path, *, text_field="text", cache_dir=None):
    """Token streams of a dataset path in documents mode: `[eot] doc [eot] doc ...`.

    Args:
        enc: an `encoder.Encoder`; its `eot_token` separates documents.
        path: a file, a directory or a glob (see `dataset.resolve_paths`), mixing `.txt`,
            `.csv`, `.jsonl` and `.npz` files.
        text_field: the key of `.jsonl` records that holds the text.
        cache_dir: the token cache folder for large text files (see `token_cache.cache_root`).

    Returns:
        A list of 1-D integer arrays: one stream of all small files' documents, in file order,
        then one per large text file (a read-only memmap) and per `.npz` array.

    Raises:
        FileNotFoundError: when the path names no files.
        ValueError: a file with no documents, or a malformed `.csv`, `.jsonl` or `.npz` (the
            message names the file, and the line for `.jsonl`).
    """
    n_vocab = len(enc.encoder)
    dtype = token_dtype(enc)
    pieces, chunks, digest = [], [], None
    print("Loading dataset (one document per line)...")
    for file in tqdm.tqdm(dataset_module.resolve_paths(path)):
        if file.endswith(".npz"):
            chunks += dataset_module.read_npz(file, n_vocab)
        elif os.path.getsize(file) > dataset_module.LARGE_FILE_BYTES and not file.endswith((".csv", ".jsonl")):
            digest = digest or token_cache.vocab_digest(enc)
            chunks.append(_large_file_documents(enc, file, cache_dir, digest))
        else:
            pieces += [np.asarray([enc.eot_token] + enc.encode(doc), dtype) for doc in _documents(file, text_field)]
    if pieces:
        chunks.insert(0, np.concatenate(pieces))
    chunks = [chunk for chunk in chunks if len(chunk)]
    print(f"dataset has {sum(len(c) for c in chunks)} tokens in {sum(count_documents(c, enc.eot_token) for c in chunks)} "
          "documents")
    return chunks


def _documents(file, text_field):
    """The documents of one small file, refusing a file that has none."""
    if file.endswith(".csv"):
        docs = [row for row in read_csv_column(file) if row.strip()]
    elif file.endswith(".jsonl"):
        docs = [text for text in read_jsonl(file, text_field) if text.strip()]
    else:
        docs = read_lines(file)
    if not docs:
        raise ValueError(f"dataset file {file!r} has no non-empty line, row or record; with line_by_line=True "
                         "each non-empty line (CSV row, JSON record) is one document")
    return docs


def _large_file_documents(enc, path, cache_dir, digest):
    """A large text file's document stream from the token cache, encoding it line by line on first use."""
    with open(path, "rb") as f:
        dataset_module.check_text(f.read(SNIFF_BYTES), path)
    entry = token_cache.cache_path(path, cache_dir, f"{digest}/{_MODE_KEY}")
    if not os.path.exists(entry):
        dataset_module.warn_bad_utf8(path, dataset_module.count_bad_utf8(path))
        _write_documents_entry(enc, path, entry)
    tokens = token_cache.read_entry(enc, entry)
    if not len(tokens):
        raise ValueError(f"dataset file {path!r} has no non-empty line; with line_by_line=True each non-empty "
                         "line is one document")
    return tokens


def _write_documents_entry(enc, path, entry):
    """Encode `path` one line at a time into a little-endian token file that appears atomically."""
    dtype = token_dtype(enc)  # what token_cache.read_entry reads
    with open_atomic(entry, "wb") as out, open(path, encoding="utf-8", errors="replace") as text:
        block = []
        for line in text:  # universal newlines, as read_text
            if line.strip():
                block += [enc.eot_token] + enc.encode(line.rstrip("\n"))
            if len(block) >= _BLOCK_TOKENS:
                out.write(np.asarray(block, dtype).tobytes())
                block = []
        out.write(np.asarray(block, dtype).tobytes())


# ---------------------------------------------------------------------------------------------
# Counting documents


def count_documents(chunk, eot):
    """The documents in a stream: its separators, plus one when it does not begin with a separator."""
    positions = separator_positions(chunk, eot)
    return len(positions) + int(len(chunk) > 0 and chunk[0] != eot)


# ---------------------------------------------------------------------------------------------
# The run's mode: documents or gpt-2-simple's stream


def training_data(enc, dataset, opts, template, n_ctx):
    """(data, window): a run's training data (`load_chunks`; `template` the chat template's text or None)
    and the tokens of its training windows."""
    structured = chats.is_structured(dataset)
    if opts.val_dataset is not None and chats.is_structured(opts.val_dataset) != structured:
        kinds = ("plain text", "conversations or prompt/completion records")
        raise ValueError(f"val_dataset {opts.val_dataset!r} holds {kinds[not structured]} but the dataset holds "
                         f"{kinds[structured]}; hold out records of the same kind as the training data")
    data = chats.fit_context(load_chunks(enc, dataset, opts, template), n_ctx)
    window = min(n_ctx, make_sampler(data, enc, opts, 0).longest)
    if window < 2:
        raise ValueError(f"dataset {dataset!r} has no chunk of 2 or more tokens, so there is nothing to predict; "
                         "pass more text")
    return data, window


def load_chunks(enc, path, opts, template=None):
    """The training data of dataset `path`: token chunks in the mode `opts.line_by_line` selects, or
    `chats.Examples` for structured records (rendered by the chat template of text `template`, None: the
    built-in one) and for packed documents."""
    if chats.is_structured(path):
        if opts.line_by_line:
            raise ValueError("line_by_line=True reads plain text, one document a line; conversations and "
                             "prompt/completion records are examples already: leave line_by_line out")
        return chats.load_examples(enc, path, chats.template_for(template, enc), train_on=opts.train_on)
    if opts.line_by_line:
        chunks = load_documents(enc, path, text_field=opts.text_field)
        return documents_as_examples(chunks, enc.eot_token) if opts.packing else chunks
    if opts.packing:
        raise ValueError("packing=True packs documents or structured records; pass line_by_line=True with it, "
                         "or a .jsonl of conversations")
    return dataset_module.load_dataset(enc, path, opts.combine, text_field=opts.text_field)


def each_document(chunk, eot):
    """Each document of a stream whole, as int32 `[eot] document [eot]`: what packing trains on and
    `evaluate` scores (a stream that does not begin with a separator has its first document all the same)."""
    cut = separator_positions(chunk, eot)
    if not len(cut) or cut[0] != 0:
        cut = np.concatenate([[0], cut])
    for first, end in zip(cut, np.append(cut[1:], len(chunk))):
        body = np.asarray(chunk[first:end], np.int32)
        yield np.concatenate([body if body[0] == eot else np.r_[eot, body], [eot]]).astype(np.int32)


def documents_as_examples(chunks, eot):
    """Documents mode's streams as examples to pack: `[eot] document [eot]` each, every target trained."""
    tokens = [doc for chunk in chunks if len(chunk) for doc in each_document(chunk, eot)]
    masks = [np.r_[False, np.ones(len(t) - 1, bool)] for t in tokens]
    return chats.Examples(tokens, masks)


def make_sampler(data, enc, opts, seed):
    """The sampler of that data: examples one a row or packed, documents' windows, or the stream's."""
    if isinstance(data, chats.Examples):
        return ExampleSampler(data, seed, pack=opts.packing is not False, eot=enc.eot_token)
    return WindowSampler(data, seed, eot=enc.eot_token if opts.line_by_line else None)
