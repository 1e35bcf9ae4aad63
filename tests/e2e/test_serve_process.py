"""The `serve` and `generate --stream` commands in real processes: SIGTERM drains the server (what cannot
finish in time says "abort"), a missing extra."""
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from runs import free_ports, make_tiny_model, subprocess_env

import gpt2_simple as gpt2
from gpt2_simple import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, real_vocab_dir):
    return make_tiny_model(tmp_path_factory.mktemp("serve_process"), real_vocab_dir, seed=2)


@pytest.mark.slow
def test_sigterm_mid_stream_ends_the_stream_and_exits_cleanly(model_dir):
    """An endless stream outlives the shutdown timeout: it ends with "abort", never "length". Also:
    GPT2_SIMPLE_API_KEY sets the key."""
    port = free_ports(1)[0]
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


# ---------------------------------------------------------------------------------------------
# A graceful stop: SIGTERM drains the server; what cannot finish in time says "abort"

# 200 tokens take about a second; the context holds 1,000 tokens after a prompt (no sliding window), so
# requests that arrive while others run can join their batch.
SLOW = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 64, "n_head": 2, "n_layer": 2}
NO_EOT = {"50256": -100}  # no row ends early by drawing end-of-text (about 1 in 50,000 a token at random)


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory, real_vocab_dir):
    return make_tiny_model(tmp_path_factory.mktemp("drain"), real_vocab_dir, name="slow", hparams=SLOW, seed=3)


def _start(model_dir, *flags):
    """A `gpt2_simple serve` process of the "slow" model, once it listens: (process, base URL)."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "gpt2_simple.cli", "serve", "--model_name", "slow", "--model_dir",
                             model_dir, "--port", str(port), "--max_tokens", "100000", *flags],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "Uvicorn running on" in line:
            return proc, f"http://127.0.0.1:{port}"
    raise AssertionError(f"the server did not start: {proc.wait(30)}")


@contextlib.contextmanager
def _watched(proc, seconds=240):
    """Kill `proc` past `seconds` (a bound on the test, never reached when it passes), and at the end."""
    watchdog = threading.Timer(seconds, proc.kill)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()


def _raw_stream(url, body):
    """POST `body` as a streamed completion over a raw socket: (the first event's line, every event's JSON)."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(dict(body, stream=True)).encode()
    sock = socket.create_connection((host, int(port)), timeout=120)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return sock


def _events_of(sock):
    """Every `data:` line the server sent on `sock` until it closed, decoded (chunked encoding undone loosely)."""
    raw = b""
    while part := sock.recv(65536):
        raw += part
    sock.close()
    lines = [line for line in raw.decode("utf-8", "replace").splitlines() if line.startswith("data: ")]
    return [None if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def _wait_running(url, rows):
    """Until `rows` rows draw in the running batch (requests that arrive mid-batch join it between chunks)."""
    while httpx.get(url + "/health").json()["running"] < rows:
        pass


@pytest.mark.slow
def test_sigterm_lets_the_requests_in_flight_finish_and_refuses_new_ones(slow_model_dir):
    import openai

    proc, url = _start(slow_model_dir)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    prompts = [("Once upon a time", 1), ("The weather", 2), ("In the news today", 3)]
    answers = {}
    with _watched(proc):
        threads = [threading.Thread(target=lambda p=p, s=s: answers.__setitem__(p, client.completions.create(
            model="slow", prompt=p, max_tokens=200, temperature=1.0, seed=s, logit_bias=NO_EOT).choices[0]))
            for p, s in prompts]
        for t in threads:
            t.start()
        streamed = _raw_stream(url, {"prompt": "A raw socket", "max_tokens": 200, "temperature": 1.0, "seed": 4,
                                     "logit_bias": NO_EOT})
        _wait_running(url, 4)
        proc.send_signal(signal.SIGTERM)
        while httpx.get(url + "/health").status_code != 503:  # draining: a load balancer takes it out
            pass
        refused = httpx.post(url + "/v1/completions", json={"prompt": "late", "max_tokens": 2})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        events = _events_of(streamed)
        for t in threads:
            t.join(120)
        assert proc.wait(120) == 0
    assert events[-1] is None and events[-2]["choices"][0]["finish_reason"] == "length"
    answers["A raw socket"] = "".join(e["choices"][0]["text"] for e in events[:-1])
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), model_name="slow", model_dir=slow_model_dir)
    for prompt, seed in prompts + [("A raw socket", 4)]:
        alone = gpt2.generate(sess, prefix=prompt, include_prefix=False, length=200, temperature=1.0, seed=seed,
                              logit_bias={50256: -100}, return_as_list=True)[0]
        got = answers[prompt]
        if not isinstance(got, str):
            assert got.finish_reason == "length"
            got = got.text
        assert got.lstrip("\n") == alone, prompt


@pytest.mark.slow
@pytest.mark.parametrize("flags, signals", [(["--shutdown_timeout", "1"], [signal.SIGTERM]),
                                            ([], [signal.SIGINT, signal.SIGINT])],
                         ids=["past the timeout", "Ctrl-C twice"])
def test_every_answer_a_stop_cuts_says_abort(slow_model_dir, flags, signals):
    """Past the shutdown timeout, or at a second signal (the default timeout is 30 s), the rows still
    running end with "abort", and the process still exits 0."""
    import openai

    proc, url = _start(slow_model_dir, *flags)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    reasons = []
    with _watched(proc):
        threads = [threading.Thread(target=lambda i=i: reasons.extend(c.finish_reason for c in client.completions.create(
            model="slow", prompt=f"Prompt {i}", max_tokens=1000, n=2, seed=i, logit_bias=NO_EOT).choices))
            for i in range(2)]
        for t in threads:
            t.start()
        stream = client.completions.create(model="slow", prompt="streamed", max_tokens=1000, stream=True,
                                           logit_bias=NO_EOT)
        first = next(iter(stream))
        _wait_running(url, 5)
        for sig in signals[:-1]:
            proc.send_signal(sig)
            while httpx.get(url + "/health").status_code != 503:  # handled (two pending signals would be one)
                pass
        proc.send_signal(signals[-1])
        reasons += [chunk.choices[0].finish_reason for chunk in stream if chunk.choices[0].finish_reason]
        for t in threads:
            t.join(120)
        assert proc.wait(120) == 0
    assert first.choices[0].finish_reason is None
    assert reasons == ["abort"] * 5  # four plain rows and the stream: none says "length"
