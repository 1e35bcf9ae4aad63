"""Reading one dataset file as text, or as its documents: `.txt`, `.csv` and `.jsonl` files.

This module owns decoding a file's bytes (`read_text`: UTF-8 with one warning for bad bytes,
binary files refused) and splitting a file into the documents it holds: the first column of
each CSV row (`read_csv_column`), the `text_field` of each JSON-lines record (`read_jsonl`) and
the non-empty lines of a text file (`read_lines`). Every malformed input is a one-line
ValueError naming the file and line. It does not own how documents or text become tokens
(`dataset.py` for streams, `documents.py` for documents).
"""
import csv
import io
import json
import re
import warnings

SNIFF_BYTES = 8192  # a NUL byte in this many leading bytes marks a file as binary (see check_text)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of one bad byte


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
    check_text(raw[:SNIFF_BYTES], path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        warn_bad_utf8(path, count_escaped(raw.decode("utf-8", "surrogateescape")))
        text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def count_escaped(text):
    """How many bad bytes `surrogateescape` decoding left in `text`."""
    return len(_ESCAPED_BYTE.findall(text))


def warn_bad_utf8(path, bad):
    if bad:
        warnings.warn(
            f"{path}: {bad} invalid UTF-8 byte(s) replaced with U+FFFD; re-save the file as "
            "UTF-8 to keep those characters",
            UnicodeWarning,
            stacklevel=3,
        )


def check_text(head, path):
    """Refuse a binary file, given its first `SNIFF_BYTES` bytes."""
    if b"\0" in head:
        raise ValueError(
            f"dataset file {path!r} is not a text file (it contains NUL bytes); "
            "pass .txt/.csv/.npz files (or .jsonl)"
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


def read_jsonl(path, text_field="text"):
    """The `text_field` string of every record of a JSON-lines file (blank lines skipped).

    Raises:
        ValueError: a line that is not a JSON object, or whose `text_field` is missing or not
            a string (the message names the file and the line number).
    """
    texts = []
    for number, record in json_lines(path, 'write one JSON object per line, such as {"text": "..."}'):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{path} line {number} has no string field {text_field!r} (it has {found}); "
                             "pass text_field= naming the key that holds each document's text")
        texts.append(record[text_field])
    return texts


def json_lines(path, fix):
    """(line number, decoded value) of each non-blank line of a JSON-lines file (decoded as by `read_text`).

    Raises:
        ValueError: a line that is not JSON, naming the file, the line and `fix`.
    """
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON ({error.msg}); {fix}") from None


def read_lines(path):
    """The non-empty lines of a text file (a line of only whitespace is empty), newlines removed."""
    return [line for line in read_text(path).split("\n") if line.strip()]
