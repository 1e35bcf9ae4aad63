"""The `serve` and `generate --stream` commands in real processes: SIGTERM mid-stream, a missing extra."""
import json
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from runs import make_tiny_model, subprocess_env

from gpt2_simple import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, real_vocab_dir):
    return make_tiny_model(tmp_path_factory.mktemp("serve_process"), real_vocab_dir, seed=2)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_mid_stream_ends_the_stream_and_exits_cleanly(model_dir):
    """An endless stream outlives the shutdown timeout: it ends with "abort", never "length". Also:
    GPT2_SIMPLE_API_KEY sets the key."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2_simple.cli", "serve", "--model_name", "tiny", "--model_dir", model_dir,
         "--port", str(port), "--max_tokens", "100000", "--shutdown_timeout", "1"],
        env=subprocess_env(GPT2_SIMPLE_API_KEY="from-env"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(240, proc.kill)  # a bound on the whole test, never reached when it passes
    watchdog.start()
    try:
        log = []
        for line in proc.stderr:  # Uvicorn says when it listens
            log.append(line)
            if "Uvicorn running on" in line:
                break
        assert f"http://127.0.0.1:{port}" in "".join(log), "".join(log)
        body = {"prompt": "Hello", "max_tokens": 100000, "stream": True}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body).status_code == 401  # the env's key
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120,
                          headers={"Authorization": "Bearer from-env"}) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert json.loads(first[6:])["choices"][0]["text"] is not None
        assert rest[-1] == "data: [DONE]"  # cancelled, and the stream still ended properly
        chunks = [json.loads(line[6:]) for line in rest[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "abort"
        assert sum(len(c["choices"][0]["text"]) for c in chunks) < 100000
        assert proc.wait(120) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "Shutting down" in err
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"http://127.0.0.1:{port}/health")
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert cli.main(["serve", "--model_name", "tiny", "--model_dir", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[serve]"' in err and "uvicorn" in err


def test_the_core_import_does_not_load_the_server_stack():
    code = "import sys, gpt2_simple; assert not {'starlette', 'uvicorn'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=subprocess_env())


@pytest.mark.slow
def test_generate_stream_prints_the_text_of_generate(model_dir, capsys):
    args = ["generate", "--model_name", "tiny", "--model_dir", model_dir, "--length", "30", "--seed", "4",
            "--prefix", "Hi 😀", "--stop", "zz"]
    assert cli.main(args + ["--stream"]) == 0
    streamed = capsys.readouterr().out
    assert cli.main(args + ["--stdout"]) == 0
    printed = capsys.readouterr().out
    assert streamed == printed  # standard output holds the texts only ("Loading ..." goes to stderr)
    assert streamed.startswith("Hi 😀")
