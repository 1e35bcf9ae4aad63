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

Then many fine-tunes: rank-8 LoRA runs over the same model (random adapters, all four layers, as
`lora_save="adapters"` writes them). 16 clients spread over 4 of them against 16 clients of one
(`adapters_4_vs_1`), and the server's resident memory with 10 of them against the model served
alone, beside the bound base + 10 adapters + 5% (`ten_adapters_rss_mb`, `rss_bound_mb`), each read once the
server is at rest after the same traffic.
"""
import json
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


def _start_server(model_dir, name, serving=None):
    """`gpt2_simple serve` of the model `name`, or with `serving` (flags naming runs) instead; (process, URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "gpt2_simple.cli", "serve", "--port", str(port), "--max_queue", "256"]
                            + (serving or ["--model_name", name, "--model_dir", model_dir]),
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


def _same(count, models=None):
    """`count` equal requests: the same prompt and options, no seed; `models`: request i names models[i % len]."""
    return [dict({"prompt": PROMPT, "max_tokens": NEW_TOKENS}, **({"model": models[i % len(models)]} if models else {}))
            for i in range(count)]


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
    result.update(_many(parent, args.model))
    return result


def _adapter_runs(parent, name, count, rank=8):
    """`count` LoRA run folders `ad0`... under `parent/checkpoint`, adapters-only saves over `parent/name`: (their names,
    the MB one adapter holds)."""
    import shutil

    from gpt2_simple.formats import adapters
    from gpt2_simple.formats.checkpoint import write_bundle, write_state
    from gpt2_simple.model.adapter_rows import AdapterTable
    from gpt2_simple.model.hparams import load_hparams
    from gpt2_simple.model.lora import LAYER_PATHS, TARGETS

    base = os.path.join(parent, name)
    hp = load_hparams(base)
    rng, names, shapes = np.random.default_rng(0), [], AdapterTable(hp).shapes()
    settings = dict(rank=rank, alpha=float(rank), targets=list(TARGETS), base_precision=None, base_folder=base,
                    base_folder_absolute=base, base_checkpoint="latest")
    for i in range(count):
        folder = os.path.join(parent, "checkpoint", f"ad{i}")
        os.makedirs(folder)
        tensors = {adapters.SETTINGS_TENSOR: np.array(json.dumps(settings).encode())}
        for layer in range(hp.n_layer):
            for target in TARGETS:
                nx, nf = shapes[target]
                path = f"model/h{layer}/{LAYER_PATHS[target]}"
                tensors[path + "/lora_A"] = rng.normal(0, 0.02, (nx, rank)).astype(np.float32)
                tensors[path + "/lora_B"] = rng.normal(0, 0.02, (rank, nf)).astype(np.float32)
        write_bundle(os.path.join(folder, "model-1"), tensors)
        write_state(folder, [os.path.join(folder, "model-1")])
        for file in ("hparams.json", "encoder.json", "vocab.bpe"):
            shutil.copy(os.path.join(base, file), folder)
        names.append(f"ad{i}")
    return names, hp.n_layer * sum(4 * (nx + nf) * rank for nx, nf in shapes.values()) / 2**20


def _rss_mb(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _wait_idle(url):
    """Until the server's /health says nothing waits or runs, and a second more (its worker's last trim)."""
    import httpx

    while True:
        health = httpx.get(url + "/health", timeout=30).json()
        if not health["queued"] and not health["running"]:
            break
        time.sleep(0.05)
    time.sleep(1.0)


def _many(parent, name):
    """Many fine-tunes: 16 clients over 4 adapters against 16 of one; resident memory with 10 against the model alone.

    Every server gets the same traffic (48 requests to compile what they meet, then 32 timed) before its
    resident memory is read; the one-adapter server runs first and last, to show the spread between servers.
    """
    (runs, one), result = _adapter_runs(parent, name, 10), {}
    checkpoint = ["--checkpoint_dir", os.path.join(parent, "checkpoint"), "--max_adapters", "10"]
    servers = (("base_alone_", None, None), ("one_adapter_", runs[:1], None), ("four_adapters_", runs[:4], runs[:4]),
               ("ten_adapters_", runs, runs), ("one_adapter_again_", runs[:1], None))
    for label, served, asked in servers:
        flags = None if served is None else checkpoint + [f for r in served for f in ("--run_name", r)]
        proc, url = _start_server(parent, name, flags)
        try:
            _load(url, 16, _same(16, asked))  # compile the batch sizes and windows the runs meet: joining
            _load(url, 16, _same(32, asked))  # rows make more of them than one round of 16 (measured: 0.6x)
            result.update(_load(url, 16, _same(32, asked), label=label))
            _wait_idle(url)  # at rest: the worker has given back what the last batch freed
            result[label + "rss_mb"] = _rss_mb(proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    result["adapter_mb"], result["rss_bound_mb"] = one, (result["base_alone_rss_mb"] + 10 * one) * 1.05
    result["adapters_4_vs_1"] = result["four_adapters_c16_tokens_per_s"] / result["one_adapter_c16_tokens_per_s"]
    result["adapters_4_vs_1_again"] = (result["four_adapters_c16_tokens_per_s"]
                                       / result["one_adapter_again_c16_tokens_per_s"])
    result["adapters_4_vs_base"] = result["four_adapters_c16_tokens_per_s"] / result["base_alone_c16_tokens_per_s"]
    return result
