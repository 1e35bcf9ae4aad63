"""The training tokens of a run, for the copy index: its recorded dataset, read as training read it.

This module owns finding what a run was trained on (the dataset path and mode in its
`training.json`, or one given) and reading it into one token array with `documents.load_chunks`,
so large files come from the token cache `finetune` already wrote and are not encoded again. The
index over those tokens is `generation/copies.py`'s; the session joins the two.
"""
import os

import numpy as np

from ..formats import chat_template, run_record
from . import chats
from .documents import load_chunks
from .options import TrainOptions


def training_tokens(run_dir, enc, dataset=None, line_by_line=None):
    """(tokens, separator): the run's training tokens joined end to end, and the end-of-text id of
    a documents run (None for a stream).

    Args:
        run_dir: the run folder; its training.json names the dataset unless `dataset` is given.
        enc: the run's `encoder.Encoder`.
        dataset: the training text (any `finetune` dataset form), for runs without training.json.
        line_by_line: the dataset's mode (default: as recorded).

    Raises:
        FileNotFoundError: no dataset recorded or given, or the recorded one has moved.
    """
    record = run_record.read_training(run_dir) or {}
    dataset = dataset or record.get("dataset")
    if dataset is None:
        raise FileNotFoundError(f"{run_dir} records no training dataset (it has no {run_record.TRAINING_FILE}); "
                                "pass training_data= naming the text it was trained on")
    if not os.path.exists(dataset) and not any(c in str(dataset) for c in "*?["):
        raise FileNotFoundError(f"the training dataset {dataset} recorded in {run_dir} is gone; pass "
                                "training_data= naming where it is now")
    if line_by_line is None:
        line_by_line = run_record.trained_on_documents(run_dir)
    chunks = load_chunks(enc, dataset, TrainOptions(line_by_line=line_by_line), chat_template.read_run_template(run_dir))
    if isinstance(chunks, chats.Examples):  # conversations, end to end (their turns hold end-of-text already)
        return np.concatenate(chunks.tokens), None
    tokens = np.concatenate([np.asarray(c) for c in chunks]) if chunks else np.zeros(0, np.uint16)
    return tokens, (enc.eot_token if line_by_line else None)
