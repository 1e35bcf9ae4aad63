"""Structured training data: conversations and prompt/completion pairs, and which of their tokens to train on.

This module owns the step from records to (tokens, trained mask) examples. A `.jsonl` record is
one of the shapes TRL, MLX-LM and axolotl take, detected record by record:

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    {"prompt": "Headline: ", "completion": "Cats win"}                   # plain text, joined
    {"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    {"text": "..."}                                                     # trained whole

and a `.csv` with `prompt` and `completion` columns holds one pair a row. Messages are rendered
by the run's chat template (`formats/chat_template.py`), which also says which characters the
assistant wrote; the text is encoded with `<|endoftext|>` as its one id, and a token is trained
when it overlaps those characters (transformers' `return_assistant_tokens_mask` rule). With
`train_on="completion"` (the default) that is each assistant turn after the prompt, or the
completion, each with its closing end-of-text; `"all"` trains every token. A malformed record
is a one-line ValueError naming the file and line. Packing examples into windows is
`packing.py`'s; plain text is `dataset.py`'s and `documents.py`'s.
"""
import csv
import io
import json
import os
import warnings

import numpy as np

from ..formats import chat_template
from ..formats.chat_template import EOS, ChatTemplate, TemplateError, check_messages
from . import dataset as dataset_module
from .records import json_lines, read_text

SHAPE_KEYS = ("messages", "prompt", "completion", "conversations")
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "tool": "tool", "function": "tool"}  # axolotl / ShareGPT `from` values
_SHAPES_HELP = ('write each line as {"messages": [{"role", "content"}, ...]}, {"prompt", "completion"}, '
                '{"conversations": [{"from", "value"}, ...]} or {"text"}')


class Examples:
    """Encoded structured records: `tokens[i]` int32 and `masks[i]` bool (token j is trained), both `[len]`."""

    def __init__(self, tokens, masks):
        self.tokens, self.masks = tokens, masks

    def __len__(self):
        return len(self.tokens)


def is_structured(path):
    """Whether a dataset path holds structured records: a `.jsonl` whose first record has a shape key
    (`messages`, `prompt`, `completion`, `conversations`), or a `.csv` with prompt and completion columns."""
    for file in dataset_module.resolve_paths(path):
        if file.endswith(".jsonl") and _has_shape(_first_record(file)):
            return True
        if file.endswith(".csv") and {"prompt", "completion"} <= set(_csv_header(file)):
            return True
    return False


def _has_shape(record):
    return isinstance(record, dict) and any(k in record for k in SHAPE_KEYS)


def load_examples(enc, path, template, *, train_on="completion"):
    """Every record under `path` as tokens and a trained mask (`Examples`).

    Args:
        enc: an `encoder.Encoder` with an end-of-text token.
        path: a file, folder or glob of `.jsonl` and `.csv` files (see module docstring).
        template: a `ChatTemplate` for message records.
        train_on: 'completion' or 'all'.

    Raises:
        ValueError: a malformed record (naming its file and line), a file of another kind, or
            records with nothing to train on.
    """
    tokens, masks, empty = [], [], 0
    for file in dataset_module.resolve_paths(path):
        for text, spans in _rendered(file, template, train_on):
            ids, mask = encode_marked(enc, text, spans)
            mask[0] = False  # the first token has nothing before it to be predicted from
            if not mask.any():
                empty += 1
                continue
            tokens.append(ids)
            masks.append(mask)
    if empty:
        warnings.warn(f"{empty} record(s) in {os.fspath(path)!r} have no assistant turn or completion to train on "
                      "and were skipped; add one, or pass train_on='all'", stacklevel=3)
    if not tokens:
        raise ValueError(f"dataset {os.fspath(path)!r} has no record with an assistant turn or completion; "
                         "add them, or pass train_on='all' to train on every token")
    print(f"dataset has {sum(len(t) for t in tokens)} tokens in {len(tokens)} records, "
          f"{sum(int(m.sum()) for m in masks)} of them trained on")
    return Examples(tokens, masks)


def _rendered(file, template, train_on):
    """(text, spans to train on) for each record of one file."""
    if file.endswith(".jsonl"):
        for number, record in _jsonl_records(file):
            yield _render(record, template, f"{file} line {number}", train_on)
    elif file.endswith(".csv"):
        for number, row in _csv_rows(file):
            pair = {"prompt": row["prompt"], "completion": row["completion"]}
            yield _render(pair, template, f"{file} line {number}", train_on)
    else:
        raise ValueError(f"dataset file {file!r} is not .jsonl or .csv; a dataset of conversations or "
                         "prompt/completion pairs takes only those (write plain text as {\"text\": ...} records)")


def _render(record, template, where, train_on="completion"):
    """One record -> (text, the character spans to train on: what the model should write, or all of it)."""
    text, spans = _render_shape(record, template, where, train_on)
    return text, spans if train_on == "completion" else [(0, len(text))]


def _render_shape(record, template, where, train_on):
    if "messages" in record or "conversations" in record:
        messages = _messages(record, where)
        return _render_messages(template, messages, 0, where, train_on)
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            text = prompt + completion + EOS  # TRL's plain pair: joined as they are, end-of-text closes it
            return text, [(len(prompt), len(text))]
        if isinstance(prompt, list) and isinstance(completion, list):
            messages = _check_messages(prompt, where, "prompt") + _check_messages(completion, where, "completion")
            return _render_messages(template, messages, len(prompt), where, train_on)
        raise ValueError(f"{where}: prompt and completion must both be strings or both be lists of messages "
                         f"(got {type(prompt).__name__} and {type(completion).__name__}); {_SHAPES_HELP}")
    if isinstance(record.get("text"), str):
        text = record["text"] + EOS
        return text, [(0, len(text))]
    raise ValueError(f"{where}: the record has none of messages, prompt/completion, conversations or text "
                     f"(it has {sorted(record)}); {_SHAPES_HELP}")


def _render_messages(template, messages, first, where, train_on):
    """Render with the template; the spans of assistant turns at index `first` or later (none for 'all')."""
    try:
        if train_on == "all":
            return template.render(messages, add_generation_prompt=False), []
        text, spans = template.spans(messages)
    except TemplateError as e:
        raise ValueError(f"{where}: {e}") from None
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(spans) != len(turns):  # a template that marks other text, or not every turn
        return text, spans
    return text, [span for i, span in zip(turns, spans) if i >= first]


def _messages(record, where):
    if "messages" in record:
        return _check_messages(record["messages"], where, "messages")
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"{where}: conversations must be a non-empty list of {{\"from\", \"value\"}} objects")
    out = []
    for t in turns:
        if t.get("from") not in SPEAKERS or not isinstance(t.get("value"), (str, type(None))):
            raise ValueError(f"{where}: each conversations turn needs \"from\" among {', '.join(SPEAKERS)} and a "
                             f"string \"value\"; got {json.dumps(t)[:80]}")
        out.append({"role": SPEAKERS[t["from"]], "content": t.get("value") or ""})
    return out


def _check_messages(messages, where, field):
    try:
        return check_messages(messages, field)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def encode_marked(enc, text, spans):
    """Token ids of `text` (`<|endoftext|>` as its one id) and which of them overlap a character span.

    Returns:
        (int32 `[tokens]`, bool `[tokens]`).
    """
    ids, starts, ends, at = [], [], [], 0
    for i, part in enumerate(text.split(EOS)):
        if i:
            ids.append(enc.eot_token)
            starts.append(at)
            ends.append(at + len(EOS))
            at += len(EOS)
        part_ids = enc.encode_ordinary(part)
        char_of_byte = np.repeat(np.arange(len(part)), [len(c.encode("utf-8")) for c in part])
        byte_ends = np.cumsum([len(enc.decode_bytes([t])) for t in part_ids], dtype=np.int64)
        byte_starts = byte_ends - np.diff(np.r_[0, byte_ends])
        ids += part_ids
        starts += list(at + char_of_byte[byte_starts]) if part_ids else []
        ends += list(at + char_of_byte[byte_ends - 1] + 1) if part_ids else []
        at += len(part)
    starts, ends = np.asarray(starts), np.asarray(ends)
    mask = np.zeros(len(ids), bool)
    for s, e in spans:
        mask |= (starts < e) & (ends > s)
    return np.asarray(ids, np.int32), mask


# ---------------------------------------------------------------------------------------------
# Reading the files


def _jsonl_records(path):
    for number, record in json_lines(path, _SHAPES_HELP):
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is a JSON {type(record).__name__}, not an object; {_SHAPES_HELP}")
        yield number, record


def _first_record(path):
    """The first record of a JSON-lines file, reading only up to it (None: not an object, or none)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None  # reported with its line number when the file is read
    return None


def _csv_header(path):
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # -sig: Excel's byte-order mark
        return next(csv.reader(f), [])


def _csv_rows(path):
    reader = csv.DictReader(io.StringIO(read_text(path).removeprefix("\ufeff")))
    try:
        for row in reader:
            if row.get("prompt") is None or row.get("completion") is None:
                raise ValueError(f"{path} line {reader.line_num} has fewer cells than the header; give each row "
                                 "its prompt and completion")
            yield reader.line_num, row
    except csv.Error as error:
        raise ValueError(f"CSV file {path!r} cannot be parsed near line {reader.line_num} ({error}); "
                         "fix the file") from None


def template_for(chat_template_source, enc):
    """The `ChatTemplate` of template text (None: the built-in one), its end-of-text spelled by the vocabulary."""
    return ChatTemplate(chat_template_source, eos_token=enc.decode([enc.eot_token]))


def run_template(chat_template_arg, dataset, run_dir, source_dir):
    """The template text a run trains with: the chat_template argument's, else the run's or its base's, else
    the built-in one for structured records; None for a run of plain text without one."""
    if chat_template_arg is not None:
        return chat_template.source_of(chat_template_arg)
    kept = chat_template.read_run_template(run_dir) or chat_template.read_run_template(source_dir)
    if kept is not None or not is_structured(dataset):
        return kept
    return chat_template.source_of(None)


def fit_context(data, n_ctx):
    """`data` without the examples that train nothing in their first `n_ctx` tokens (a prompt longer than the
    context), saying how many examples are cut and how many dropped; other data as it is."""
    if not isinstance(data, Examples):
        return data
    cut = sum(len(t) > n_ctx for t in data.tokens)
    kept = [i for i, m in enumerate(data.masks) if m[:n_ctx].any()]
    if cut:
        warnings.warn(f"{cut} of {len(data)} examples are longer than the context ({n_ctx} tokens); training reads "
                      f"the first {n_ctx} tokens of each, and drops the {len(data) - len(kept)} with nothing to "
                      "train on there", stacklevel=3)
    if not kept:
        raise ValueError(f"no example has a token to train on in its first {n_ctx} tokens (the context); shorten "
                         "the prompts")
    return Examples([data.tokens[i] for i in kept], [data.masks[i] for i in kept])
