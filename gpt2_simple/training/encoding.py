"""Pre-encoding commands: write a dataset as token ids, or a CSV as a text dataset, once.

This module owns gpt-2-simple's helpers `encode_dataset` (a dataset path -> an `.npz` of token
chunks that `finetune` reads back without encoding) and `encode_csv` (a CSV's first column -> a
`<|startoftext|>`...`<|endoftext|>` text file). Both read with `dataset.py`'s rules and write
their output atomically (`atomic.open_atomic`). It does not own how datasets are read or joined
(`dataset.py`), the token cache for large files (`token_cache.py`) or BPE (`encoder`).
"""
import os

import numpy as np

import encoder as bpe
from encoder.files import token_dtype

from ..atomic import open_atomic
from .dataset import load_dataset, read_csv_column
from .documents import load_documents


def encode_dataset(file_path, model_dir="models", out_path="text_encoded.npz", model_name="124M",
                   combine=50000, *, line_by_line=False, text_field="text"):
    """Encode a dataset once and save its token chunks as `.npz` (arrays `arr_0`, `arr_1`, ...).

    Pass the `.npz` to `finetune` as its dataset to skip encoding on every run.

    Args:
        file_path: a file, directory or glob, as for `load_dataset`.
        model_dir: folder holding the downloaded models.
        out_path: where to write; `.npz` is appended when missing (as `np.savez` does).
        model_name: which model's vocabulary to use (`model_dir/model_name`).
        combine: see `load_dataset`.
        line_by_line: encode one document per line / CSV row / .jsonl record, joined with the
            end-of-text id (`documents.py`); pass the .npz to finetune(line_by_line=True).
        text_field: the key of .jsonl records that holds the text.

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
    if line_by_line:
        chunks = load_documents(enc, file_path, text_field=text_field)
    else:
        chunks = load_dataset(enc, file_path, combine, text_field=text_field)
    out_path = os.fspath(out_path)
    if not out_path.endswith(".npz"):
        out_path += ".npz"
    print("Writing", out_path)
    dtype = token_dtype(enc)
    with open_atomic(out_path, "wb") as f:
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
    with open_atomic(out_path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(start_token + row + end_token + "\n")
    return out_path
