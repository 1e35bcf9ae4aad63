"""What a run folder says about how it was trained, beyond OpenAI's files: its JSON records and its curves.

This module owns three small JSON files beside `hparams.json`, which gpt-2-simple and TF1 code
ignore: `documents.json`, written when the run was trained on documents (`line_by_line=True`),
so that `generate` starts every sample at end-of-text and stops at the next one; and
`best.json`, the step and validation loss of the `model-best` checkpoint (`keep_best=True`),
which the `checkpoint` state file never names, so gpt-2-simple's latest stays the latest; and
`training.json`, the dataset path, base model folder and main settings (read by `evaluate`, the
copy index and the model card); and reading the loss curves back from the run's event files.
Writing the weights is `checkpoint.py`'s.
"""
import glob
import json
import os
import warnings

import tensorflow as tf

from ..atomic import write_text

DOCUMENTS_FILE = "documents.json"
BEST_FILE = "best.json"
BEST_CHECKPOINT = "model-best"  # checkpoint='best' names it


def record_documents(run_dir, separator):
    """Record that the run trains on documents separated by token id `separator`; None: on a
    stream (line_by_line=False), so an earlier record is removed."""
    path = os.path.join(run_dir, DOCUMENTS_FILE)
    if separator is not None:
        write_text(path, json.dumps({"line_by_line": True, "separator": int(separator)}) + "\n")
    elif os.path.isfile(path):
        os.remove(path)


def read_documents(folder):
    """`{"line_by_line": True, "separator": id}` when `folder` was trained on documents, else None."""
    record = _read_json(folder, DOCUMENTS_FILE, "delete it if the run was not trained with line_by_line=True")
    return record if isinstance(record, dict) and record.get("line_by_line") else None


def trained_on_documents(folder):
    """Whether the run in `folder` trained on documents (`line_by_line=True`): the one answer to "as the
    run trained" for `generate`, `generate_stream`, `evaluate`, the copy index and the server. A model
    folder, an older run or None: False."""
    if not folder:
        return False
    if read_documents(folder) is not None:
        return True
    return bool((read_training(folder) or {}).get("line_by_line"))


def read_best(folder):
    """The run's `{"step", "val_loss"}` of its `model-best` checkpoint, or None."""
    return _read_json(folder, BEST_FILE, "delete it (it only records the best checkpoint's step and loss)")


def write_best(run_dir, step, val_loss):
    write_text(os.path.join(run_dir, BEST_FILE), json.dumps({"step": int(step), "val_loss": float(val_loss)}) + "\n")


TRAINING_FILE = "training.json"
CURVES = ("loss", "avg_loss", "val_loss")  # the scalars `read_curves` reads from a run's event files


def record_training(run_dir, dataset, base_model, line_by_line, settings=None):
    """Record what the run trains on (`dataset`'s absolute path), the base model folder it started
    from and its main `settings` (a dict, for the model card), so `evaluate` can compare with that
    base and the copy index can find the text. A resumed run keeps the base model its first call recorded."""
    earlier = read_training(run_dir) or {}
    record = {"dataset": os.path.abspath(os.fspath(dataset)), "line_by_line": bool(line_by_line),
              "base_model": earlier.get("base_model") or (os.path.abspath(base_model) if base_model else None),
              "settings": dict(settings or {})}
    write_text(os.path.join(run_dir, TRAINING_FILE), json.dumps(record) + "\n")


EVALUATION_FILE = "evaluation.json"
EVALUATION_KEYS = ("model", "step", "loss", "perplexity", "bits_per_byte", "tokens")


def record_evaluation(run_dir, dataset, rows):
    """Keep the last `evaluate` table of a run (its held-out `dataset`, one row per model) for its model card."""
    record = {"dataset": os.path.basename(os.fspath(dataset)),
              "rows": [{k: row[k] for k in EVALUATION_KEYS} for row in rows]}
    _keep(run_dir, EVALUATION_FILE, record)


def _keep(run_dir, name, record):
    """Write a record for the model card; a folder that cannot be written only loses the note, with a warning."""
    try:
        write_text(os.path.join(run_dir, name), json.dumps(record) + "\n")
    except OSError as e:
        warnings.warn(f"{run_dir} is not writable ({e.strerror}); its model card will not show this {name}",
                      stacklevel=3)


def read_evaluation(run_dir):
    """The run's last `evaluate` table, `{"dataset", "rows"}`, or None."""
    return _read_json(run_dir, EVALUATION_FILE, "delete it (it only keeps the last evaluate table)")


COPIES_FILE = "copies.json"


def record_copies(run_dir, summary):
    """Keep the last copy check of a run's samples (`SampleMarks.summary`) for its model card."""
    _keep(run_dir, COPIES_FILE, summary)


def read_copies(run_dir):
    """The run's last copy check, or None."""
    return _read_json(run_dir, COPIES_FILE, "delete it (it only keeps the last copy check)")


def read_training(folder):
    """The run's `{"dataset", "line_by_line", "base_model"}` record, or None (older runs, model folders)."""
    return _read_json(folder, TRAINING_FILE, "delete it (it only records the run's dataset and base model)")


def _read_json(folder, name, fix):
    """The JSON in `folder/name`, or None when there is no such file; a ValueError naming `fix` if it is not JSON."""
    path = os.path.join(folder, name) if folder else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError:
            raise ValueError(f"{path} is not JSON; {fix}") from None


def read_curves(run_dir):
    """{tag: [[step, value], ...]} of the run's scalar events (`loss`, `avg_loss`, `val_loss`), by step."""
    curves = {tag: {} for tag in CURVES}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag in curves:
                        number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                                  else value.simple_value)
                        curves[value.tag][int(event.step)] = number  # a resumed run's later value wins
        except tf.errors.DataLossError:  # a file still being written: what was read so far
            continue
    return {tag: sorted([s, v] for s, v in points.items()) for tag, points in curves.items()}


def read_val_losses(run_dir):
    """[[step, validation loss], ...] of the run's events, by step (empty without validation)."""
    return read_curves(run_dir)["val_loss"]
