"""Downloading OpenAI's released GPT-2 models into `model_dir/<model_name>/`.

This module owns getting the seven files of a released model onto disk: checking the model name,
streaming each file over HTTP with a progress bar, resuming from a `<file>.part` left by an
interrupted run, retrying transient failures, and checking what arrived (the vocabulary files
against their known hashes, the weights against the size `hparams.json` implies). A file only
gets its final name once it is complete and checked, so "the file exists" means "the file is
good". It does not read the weights (that is checkpoint.py) nor the vocabulary (encoder/).
"""
import errno
import hashlib
import os
import re
import time

import requests
from tqdm import tqdm

from ..errors import one_line
from ..model.hparams import PRESETS, load_hparams

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
BASE_URL_ENV = "GPT2_SIMPLE_BASE_URL"

MODEL_NAMES = ("124M", "355M", "774M", "1558M")
# The first two releases were renamed when OpenAI recounted their parameters. An old name is
# fetched from the new name's URL but stored under the name the caller gave, so that a later
# finetune(model_name='117M') finds its folder.
MODEL_ALIASES = {"117M": "124M", "345M": "355M"}

DATA_FILE = "model.ckpt.data-00000-of-00001"
MODEL_FILES = ("checkpoint", "encoder.json", "hparams.json", DATA_FILE,
               "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
# The vocabulary is the same for every model size: (bytes, sha256).
KNOWN_FILES = {
    "encoder.json": (1042301, "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": (456318, "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}

CHUNK_SIZE = 1 << 16  # bytes per read; a dropped connection loses at most one partial chunk
TIMEOUT_S = (10, 60)  # (connect, read between bytes), seconds
MAX_TRIES = 5  # per file; a try that resumes a .part keeps what earlier tries received
FIRST_RETRY_DELAY_S = 1.0  # doubled after each failed try: 1, 2, 4, 8 s
_RETRY_STATUSES = {408, 429}  # client errors that mean "try again later"; other 4xx fail at once
_sleep = time.sleep  # tests replace this to retry without waiting


class DownloadError(OSError):
    """A model file could not be fetched, or what arrived is not the expected file.

    The message gives the fix as a Python call; `for_shell()` gives the same message with the
    `gpt2_simple download` command and its `--base_url` flag instead, for the command line.
    """

    def __init__(self, message, *, model_dir=None, model_name=None):
        super().__init__(message)
        self.model_dir, self.model_name = model_dir, model_name

    def for_shell(self):
        text = str(self)
        if self.model_name is not None:
            flags = "" if self.model_dir == "models" else f" --model_dir {self.model_dir}"
            text = text.replace(_python_call(self.model_dir, self.model_name),
                                f"gpt2_simple download {self.model_name}{flags}")
        return text.replace(_URL_HINT, _SHELL_URL_HINT)


# How to point downloads at a mirror, in the caller's terms.
_URL_HINT = f"base_url= or ${BASE_URL_ENV}"
_SHELL_URL_HINT = f"--base_url or ${BASE_URL_ENV}"


def _python_call(model_dir, model_name):
    return f"download_gpt2(model_dir={model_dir!r}, model_name={model_name!r})"


class _Retry(Exception):
    """A transient failure of one try; the message says what happened."""


def download_gpt2(model_dir="models", model_name="124M", *, base_url=None):
    """Download a released GPT-2 model into `model_dir/model_name/`, skipping files already there.

    Each file is fetched from `<base_url>/models/<model_name>/<file>`. An interrupted download
    leaves `<file>.part`, which the next call resumes with an HTTP Range request. A server that
    sends no Content-Length is streamed anyway, but then a truncated body cannot be told apart
    from a complete one (the vocabulary hashes and the weights-size check still apply).

    Args:
        model_dir: parent folder; created if missing.
        model_name: '124M', '355M', '774M' or '1558M'; the old names '117M' and '345M' fetch
            '124M' and '355M' and are stored under the old name.
        base_url: the server to download from (a mirror); defaults to $GPT2_SIMPLE_BASE_URL,
            then OpenAI's public bucket. A mirror serves the files at
            `<base_url>/models/<model_name>/<file>`, the seven files of `MODEL_FILES`.

    Returns:
        The model folder, `model_dir/model_name`.

    Raises:
        ValueError: `model_name` is not a GPT-2 release, or `base_url` is not an http(s) URL.
        DownloadError: a file could not be fetched (HTTP error, connection failures past
            MAX_TRIES, disk full) or failed its check; nothing bad is left under a final name.
    """
    remote_name = _check_model_name(model_name)
    base = _base_url(base_url)
    folder = os.path.join(model_dir, model_name)
    created = [f for f in (model_dir, folder) if f and not os.path.isdir(f)]
    os.makedirs(folder, exist_ok=True)
    try:
        with requests.Session() as session:
            for file_name in MODEL_FILES:
                path = os.path.join(folder, file_name)
                if not os.path.isfile(path):
                    _fetch(session, f"{base}/models/{remote_name}/{file_name}", path, model_dir, model_name)
        _check_model_folder(folder, model_dir, model_name)
    except BaseException:
        for made in reversed(created):  # the folders this call created, if they stayed empty
            if os.path.isdir(made) and not os.listdir(made):
                os.rmdir(made)
        raise
    return folder


def is_gpt2_downloaded(model_dir="models", model_name="124M"):
    """True iff all seven model files exist under `model_dir/model_name/` as regular files.

    A `<file>.part` left by an interrupted download does not count: files only get their final
    name once complete.

    Raises:
        ValueError: `model_name` is not a GPT-2 release.
    """
    _check_model_name(model_name)
    folder = os.path.join(model_dir, model_name)
    return all(os.path.isfile(os.path.join(folder, f)) for f in MODEL_FILES)


def _check_model_name(model_name):
    """Return the name the server knows `model_name` by; reject anything else (paths included)."""
    if isinstance(model_name, str) and model_name in MODEL_NAMES:
        return model_name
    if isinstance(model_name, str) and model_name in MODEL_ALIASES:
        return MODEL_ALIASES[model_name]
    valid = ", ".join(repr(n) for n in MODEL_NAMES + tuple(MODEL_ALIASES))
    raise ValueError(f"model_name={model_name!r} is not a GPT-2 release; use one of {valid}")


def _base_url(base_url):
    """The argument, else $GPT2_SIMPLE_BASE_URL, else OpenAI's bucket; without trailing slashes."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        source = "base_url" if base_url else f"${BASE_URL_ENV}"
        raise ValueError(f"{source}={url!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL!r}")
    return url.rstrip("/")


def _fetch(session, url, path, model_dir, model_name):
    """Fetch `url` to `path` via `path.part`, retrying transient failures with backoff."""
    part = path + ".part"
    delay = FIRST_RETRY_DELAY_S
    with tqdm(desc=f"Fetching {os.path.basename(path)}", unit="B", unit_scale=True,
              unit_divisor=1024, ncols=100) as bar:
        for attempt in range(1, MAX_TRIES + 1):
            try:
                _fetch_once(session, url, part, bar)
                break
            except (_Retry, requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                if attempt == MAX_TRIES:
                    resume = (f" to resume from {part} ({os.path.getsize(part)} bytes so far)"
                              if os.path.isfile(part) and os.path.getsize(part) else "")
                    raise DownloadError(
                        f"could not fetch {url} after {MAX_TRIES} tries (last: {_first_line(e)}); check your "
                        f"connection, or point downloads at a mirror ({_URL_HINT}), then re-run "
                        f"{_python_call(model_dir, model_name)}{resume}",
                        model_dir=model_dir, model_name=model_name,
                    ) from e
                _sleep(delay)
                delay *= 2
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise DownloadError(
                        f"no space left on the device holding {os.path.dirname(path)} while writing "
                        f"{part}; free {_model_size(model_name)} and re-run {_python_call(model_dir, model_name)} "
                        "to resume", model_dir=model_dir, model_name=model_name,
                    ) from e
                raise
    _check_known_file(part, path, model_dir, model_name)
    os.replace(part, path)


def _fetch_once(session, url, part, bar):
    """One GET of `url` into `part`, resuming from its current size; raises _Retry if transient."""
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    headers = {"Accept-Encoding": "identity"}  # sizes are of the file, not of a compressed body
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
        status = response.status_code
        if status == 416:  # nothing left after `offset`: the .part is complete, or is too long
            if _range_total(response) == offset:
                return
            os.remove(part)
            raise _Retry(f"HTTP 416 for a resume from byte {offset}; restarting the file")
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Retry(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise DownloadError(
                f"{url} answered HTTP {status} {response.reason}; check model_name and the base URL "
                f"({_URL_HINT})"
            )
        if "text/html" in response.headers.get("Content-Type", ""):
            raise DownloadError(
                f"{url} sent an HTML page, not a model file; check the base URL ({_URL_HINT}) and "
                "your network (a login page or proxy?)"
            )
        if status == 206:
            start, total = _content_range(response)
            if start != offset:
                os.remove(part)
                raise _Retry(f"server resumed at byte {start}, not {offset}; restarting the file")
        else:  # 200: the whole file, whether or not we asked for a range
            offset, total = 0, _int_header(response, "Content-Length")
        bar.reset(total=total)
        bar.update(offset)
        size = _write_body(response, part, "ab" if offset else "wb", offset, bar)
    if total is not None and size != total:
        if size > total:
            os.remove(part)
        raise _Retry(f"connection closed after {size} of {total} bytes")


def _write_body(response, part, mode, size, bar):
    """Append the response body to `part`; return the file's size afterwards."""
    with open(part, mode) as f:
        for chunk in response.iter_content(CHUNK_SIZE):
            f.write(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return size


def _int_header(response, name):
    value = response.headers.get(name)
    return int(value) if value is not None and value.isdigit() else None


def _content_range(response):
    """(first byte, total size or None) of a 206 response's `Content-Range: bytes a-b/total`."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        raise _Retry(f"206 response with unreadable Content-Range {response.headers.get('Content-Range')!r}")
    total = match.group(2)
    return int(match.group(1)), int(total) if total.isdigit() else None


def _range_total(response):
    """The size in a 416 response's `Content-Range: bytes */total`, or None."""
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def _check_known_file(part, path, model_dir, model_name):
    """Move `part` aside to `path.bad` and raise if it is a vocabulary file with the wrong bytes."""
    expected = KNOWN_FILES.get(os.path.basename(path))
    if expected is None:
        return
    size, sha256 = os.path.getsize(part), _sha256(part)
    if (size, sha256) != expected:
        _reject(part, path, f"is {size} bytes with sha256 {sha256}, expected {expected[0]} bytes with "
                f"sha256 {expected[1]}", model_dir, model_name)


def _check_model_folder(folder, model_dir, model_name):
    """Check a complete folder: vocabulary hashes, and weights of 4 bytes per hparams parameter."""
    for file_name in KNOWN_FILES:
        path = os.path.join(folder, file_name)
        _check_known_file(path, path, model_dir, model_name)
    try:
        hparams = load_hparams(folder)
    except ValueError as e:
        path = os.path.join(folder, "hparams.json")
        _reject(path, path, f"is not valid ({e})", model_dir, model_name)
    data = os.path.join(folder, DATA_FILE)
    size, expected = os.path.getsize(data), 4 * hparams.n_params  # float32 weights
    if size != expected:
        _reject(data, data, f"is {size} bytes but hparams.json describes {hparams.n_params} float32 "
                f"weights ({expected} bytes)", model_dir, model_name)


def _reject(current, path, problem, model_dir, model_name):
    """Rename a bad file to `path.bad` and raise a DownloadError that says how to recover."""
    bad = path + ".bad"
    os.replace(current, bad)
    raise DownloadError(
        f"{path} {problem}; moved it to {bad}; re-run {_python_call(model_dir, model_name)} to fetch it again",
        model_dir=model_dir, model_name=model_name,
    )


def _first_line(error):
    """A connection error's gist: requests nests urllib3's whole retry story in its message."""
    text = one_line(error)
    reason = re.search(r"(Failed to establish a new connection: (\[Errno -?\d+\] )?[^'\")\]]*|Connection refused|"
                       r"Name or service not known|Read timed out|timed out)", text)
    return reason.group(1) if reason else text[:200]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_size(model_name):
    """Roughly how much disk the named model needs, for error messages."""
    size = 4 * PRESETS[model_name].n_params + 3_000_000  # weights + vocabulary, index, meta
    return f"about {size / 1e9:.1f} GB"
