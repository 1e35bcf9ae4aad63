"""The `serve` section of benchmark.py: the HTTP server under 1, 4 and 16 concurrent clients.

A random-weight model folder is served by `gpt2_simple serve` in a subprocess on 127.0.0.1;
client threads here send non-streaming completions of 64 new tokens (the same prompt length, no
seed, so concurrent requests can share a batch) and report requests/s, generated tokens/s and
p50/p99 latency per concurrency; then time to the first streamed token. The same workload runs
through in-process `generate` and `generate_stream` (in this process, before the server starts),
so the server's overhead shows as a ratio.

Then mixed traffic, as real clients send it: prompts of 3 to 200 tokens, temperatures from 0.7
to 1.2, half of the requests seeded, 32 new tokens each; tokens/s of 16 clients against one
client sending the same requests (`mixed_gain_c16_vs_c1`).
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

PROMPT = "The history of the city begins in the year"
NEW_TOKENS = 64
CONCURRENCY = (1, 4, 16)
MIXED_NEW_TOKENS = 32


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def _in_process(model_dir, name, repeat=4):
    import gpt2_simple as gpt2

    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, model_name=name, model_dir=model_dir)
    kwargs = dict(prefix=PROMPT, length=NEW_TOKENS, temperature=1.0, include_prefix=False, return_as_list=True)
    gpt2.generate(sess, seed=0, **kwargs)  # compile
    latencies = []
    for i in range(repeat):
        start = time.perf_counter()
        gpt2.generate(sess, seed=i, **kwargs)
        latencies.append(time.perf_counter() - start)
    first = []
    for i in range(repeat):
        start = time.perf_counter()
        next(gpt2.generate_stream(sess, prefix=PROMPT, length=NEW_TOKENS, seed=i, include_prefix=False))
        first.append(time.perf_counter() - start)
    sess.close()
    return {"generate_p50_s": _percentile(latencies, 50), "generate_tokens_per_s": NEW_TOKENS / min(latencies),
            "generate_stream_first_token_s": _percentile(first, 50)}


def _start_server(model_dir, name):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "gpt2_simple.cli", "serve", "--model_name", name, "--model_dir",
                             model_dir, "--port", str(port), "--max_queue", "256"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "Uvicorn running on" in line:
            break
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc, f"http://127.0.0.1:{port}"


def _load(url, clients, bodies, label=""):
    """`clients` threads sending `bodies` between them (client i every clients-th): rates and latencies."""
    import httpx

    latencies, tokens, statuses = [], [], []

    def client(mine):
        with httpx.Client(base_url=url, timeout=600) as http:
            for body in mine:
                start = time.perf_counter()
                r = http.post("/v1/completions", json=body)
                latencies.append(time.perf_counter() - start)
                statuses.append(r.status_code)
                tokens.append(r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0)

    threads = [threading.Thread(target=client, args=(bodies[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert set(statuses) == {200}, statuses
    name = f"{label}c{clients}"
    return {f"{name}_requests_per_s": len(latencies) / wall, f"{name}_tokens_per_s": sum(tokens) / wall,
            f"{name}_p50_s": _percentile(latencies, 50), f"{name}_p99_s": _percentile(latencies, 99)}


def _same(count):
    """`count` equal requests: the same prompt and options, no seed."""
    return [{"prompt": PROMPT, "max_tokens": NEW_TOKENS}] * count


def _mixed(count, seed=0):
    """`count` requests of mixed traffic: prompts of 3 to 200 tokens (one word a token), mixed options, every other one seeded."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(count):
        body = {"prompt": " the" * int(rng.integers(3, 201)), "max_tokens": MIXED_NEW_TOKENS,
                "temperature": float(rng.choice([0.7, 0.9, 1.0, 1.2])), "top_k": int(rng.choice([0, 40]))}
        if i % 2:
            body["seed"] = i
        bodies.append(body)
    return bodies


def _first_token(url, repeat=4):
    import httpx

    waits = []
    with httpx.Client(base_url=url, timeout=600) as http:
        for _ in range(repeat):
            start = time.perf_counter()
            body = {"prompt": PROMPT, "max_tokens": NEW_TOKENS, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"text": ""' not in line:
                        waits.append(time.perf_counter() - start)
                        break
    return _percentile(waits, 50)


def bench_serve(args, make_folder):
    """The serve section; `make_folder(parent, name, hparams)` writes a random-weight model folder."""
    from gpt2_simple.model.hparams import PRESETS

    parent = tempfile.mkdtemp(prefix="bench_serve_")
    make_folder(parent, args.model, PRESETS[args.model])
    result = _in_process(parent, args.model)
    proc, url = _start_server(parent, args.model)
    try:
        _load(url, 1, _same(1))  # warm the connection and the server's first request
        _load(url, 16, _same(16))  # and the batch sizes the runs below meet
        for clients in CONCURRENCY:
            result.update(_load(url, clients, _same(clients * max(2, 8 // clients))))
        result["stream_first_token_s"] = _first_token(url)
        _load(url, 16, _mixed(32))  # compile the batch sizes and cache windows mixed traffic meets
        _load(url, 1, _mixed(4))
        for clients in (1, 16):
            result.update(_load(url, clients, _mixed(32), label="mixed_"))
    finally:
        proc.send_signal(signal.SIGTERM)
        result["server_exit_code"] = proc.wait(120)
    result["batching_gain_c16_vs_c1"] = result["c16_tokens_per_s"] / result["c1_tokens_per_s"]
    result["mixed_gain_c16_vs_c1"] = result["mixed_c16_tokens_per_s"] / result["mixed_c1_tokens_per_s"]
    result["server_overhead_c1"] = result["c1_p50_s"] / result["generate_p50_s"] - 1
    return result
