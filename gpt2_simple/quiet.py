"""A quiet console for the command line: TensorFlow's native start-up notices filtered out.

TensorFlow 2.21 writes its C++ log lines (the oneDNN notice, absl's "All log messages before
absl::InitializeLog()" line, CPU-feature errors during XLA compilation) straight to file
descriptor 2, before and regardless of `TF_CPP_MIN_LOG_LEVEL`. This module owns the filter the
`gpt2_simple` command runs under: fd 2 goes through a pipe, and native log lines below the level
of `TF_CPP_MIN_LOG_LEVEL` (INFO 0, WARNING 1, ERROR 2; the command's default is 3, hiding them
all) are dropped while every other byte, Python's own messages and tracebacks included, passes
through unchanged. The library never calls it: importing `gpt2_simple` changes nothing.
"""
import contextlib
import logging
import os
import re
import sys
import threading

DEFAULT_LEVEL = "3"  # what the command sets when the user has not: no native log lines
# absl's line format: a severity letter, MMDD, the time, the thread, file:line] message.
_NATIVE_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
# The second line of cpu_feature_guard's two-line notice, which has no prefix of its own.
_CONTINUATION = b"To enable the following instructions:"


def set_log_level():
    """`TF_CPP_MIN_LOG_LEVEL` (default 3) for TensorFlow, before it is imported; returns the level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        level = int(DEFAULT_LEVEL)
    if level >= 1:
        logging.getLogger("absl").setLevel(logging.ERROR)  # absl's Python warnings (SavedModel export)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return level


def keep(line, level, previous_kept=True):
    """True for a line of native output the user should see at `level` (after a kept line or not)."""
    if level >= 1 and line.rstrip(b"\r\n") == _ABSL_PREAMBLE:
        return False
    if not previous_kept and line.startswith(_CONTINUATION):
        return False
    match = _NATIVE_LINE.match(line)
    return match is None or _SEVERITY[match.group(1)] >= level


@contextlib.contextmanager
def filtered_stderr(level):
    """Run the block with fd 2 filtered by `keep(line, level)`; a no-op at level 0."""
    if level < 1:
        yield
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no usable fd 2: nothing to filter
        yield
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, original, level), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the forwarder reads to the end
        forwarder.join(timeout=10)
        os.close(original)


def _forward(read_end, target, level):
    pending, kept = b"", True
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = _write(target, [line + b"\n" for line in lines], level, kept)
            if pending and not _may_be_native(pending):  # a progress bar's "\r" update: pass it on now
                kept = _write(target, [pending], level, kept)
                pending = b""
    if pending:
        _write(target, [pending], level, kept)


def _may_be_native(start):
    """True if an unfinished line could still become a native log line (so it waits for its end)."""
    return (re.match(rb"^[IWEF](\d|$)", start) is not None or _ABSL_PREAMBLE.startswith(start[:len(_ABSL_PREAMBLE)])
            or _CONTINUATION.startswith(start[:len(_CONTINUATION)]))


def _write(target, lines, level, kept):
    """Write the lines to keep; returns whether the last line was kept."""
    out = []
    for line in lines:
        kept = keep(line, level, kept)
        if kept:
            out.append(line)
    data = b"".join(out)
    while data:
        data = data[os.write(target, data):]
    return kept
