"""The server: the openai client against it, every bad request, auth, batching, disconnects and load.

One tiny model with the real vocabulary (conftest's `served_sess`) is served once for the module,
on 127.0.0.1 and a free port, with an API key, a small queue and a small body limit.
"""
import json
import threading

import httpx
import pytest
from serving import client_fixture, url_of

import gpt2_simple as gpt2

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 20000  # tokens: a request that runs until it is cancelled
MAX_QUEUE = 4


@pytest.fixture(scope="module")
def sess(served_sess):
    return served_sess


client = client_fixture(KEY, max_tokens=LONG, max_queue=MAX_QUEUE, max_batch=16, max_body=4096)


@pytest.fixture(scope="module")
def server(client):
    return url_of(client)


def post(client, **body):
    return client.post("/v1/completions", json=body)


def health(client):
    return client.get("/health").json()


def wait_health(client, ok, tries=2000):
    """/health until `ok(state)` holds, at most `tries` requests (bounded; no sleeping)."""
    for _ in range(tries):
        state = health(client)
        if ok(state):
            return state
    raise AssertionError(f"/health never reached the state: {state}")


class LongStream:
    """A streaming request that keeps the worker busy until closed; entered once its first event came."""

    def __init__(self, client, prompt="Busy"):  # noqa: D107
        self.context = client.stream("POST", "/v1/completions",
                                     json={"prompt": prompt, "max_tokens": LONG, "stream": True})

    def __enter__(self):
        self.response = self.context.__enter__()
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()
        assert next(line for line in self.lines if line).startswith("data: {")
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)


@pytest.mark.slow
def test_the_openai_client_works_unchanged(server, sess):
    from openai import OpenAI

    ai = OpenAI(base_url=server + "/v1", api_key=KEY)
    assert [m.id for m in ai.models.list().data] == ["tiny"]
    out = ai.completions.create(model="tiny", prompt="Hello there", max_tokens=20, temperature=0.9, seed=5)
    expected = gpt2.generate(sess, prefix="Hello there", length=20, temperature=0.9, seed=5, include_prefix=False,
                             return_as_list=True)[0]
    assert out.choices[0].text.lstrip("\n") == expected and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(sess.encoder.encode("Hello there")), 20)
    pieces = list(ai.completions.create(model="tiny", prompt="Hello there", max_tokens=20, temperature=0.9,
                                        seed=5, stream=True))
    assert len(pieces) > 3 and "".join(p.choices[0].text for p in pieces) == out.choices[0].text
    assert [p.choices[0].finish_reason for p in pieces][-1] == "length"


def test_stop_strings_and_penalty_through_the_server(client, sess):
    full = post(client, prompt="Once", max_tokens=40, seed=9).json()["choices"][0]["text"]
    stop = full[12:15]
    cut = post(client, prompt="Once", max_tokens=40, seed=9, stop=[stop, "zzzz"]).json()["choices"][0]
    assert cut == {"text": full[:full.index(stop)], "index": 0, "logprobs": None, "finish_reason": "stop"}
    greedy = post(client, prompt="Once", max_tokens=30, temperature=0).json()["choices"][0]["text"]
    damped = post(client, prompt="Once", max_tokens=30, temperature=0, repetition_penalty=50.0).json()
    assert damped["choices"][0]["text"] == gpt2.generate(
        sess, prefix="Once", length=30, top_k=1, temperature=1.0, repetition_penalty=50.0, include_prefix=False,
        return_as_list=True)[0] != greedy


def test_openai_penalties_logit_bias_and_min_p_through_the_openai_client(server, sess):
    from openai import OpenAI

    ai = OpenAI(base_url=server + "/v1", api_key=KEY)
    forced = ai.completions.create(model="tiny", prompt="Once", max_tokens=4, temperature=0, logit_bias={"262": 100})
    assert sess.encoder.encode(forced.choices[0].text) == [262] * 4  # " the" every time
    adjust = {"presence_penalty": 1.5, "frequency_penalty": 0.7, "extra_body": {"min_p": 0.05}}
    out = ai.completions.create(model="tiny", prompt="Once", max_tokens=30, temperature=0.9, seed=3,
                                logit_bias={"262": -100, "13": 5}, **adjust)
    expected = gpt2.generate(sess, prefix="Once", length=30, temperature=0.9, seed=3, include_prefix=False,
                             presence_penalty=1.5, frequency_penalty=0.7, min_p=0.05,
                             logit_bias={262: -100, 13: 5}, return_as_list=True)[0]
    plain = gpt2.generate(sess, prefix="Once", length=30, temperature=0.9, seed=3, include_prefix=False,
                          return_as_list=True)[0]
    assert out.choices[0].text == expected != plain


def test_prompt_lists_and_n_give_every_choice_in_order(client):
    out = post(client, prompt=["One", "Two words"], n=2, max_tokens=6, top_k=5).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "length" for c in out["choices"])
    assert out["usage"]["completion_tokens"] == 24 and out["usage"]["prompt_tokens"] == 1 + 2
    events = []
    with client.stream("POST", "/v1/completions", json={"prompt": ["One", "Two words"], "n": 2, "max_tokens": 6,
                                                        "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]) == [0, 1, 2, 3]


def test_health_models_and_page_are_served(server, client):
    assert httpx.get(server + "/health").status_code == 200  # no key needed
    assert health(client)["status"] == "ok"
    page = httpx.get(server + "/")
    assert page.status_code == 200 and 'id="generate"' in page.text and "://" not in page.text  # offline: no CDN
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_a_missing_or_wrong_key_is_401(server, headers):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions")):
        r = httpx.request(method, server + path, headers=headers, json={"prompt": "a"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_api_key"


BAD = [
    ("malformed JSON", b'{"prompt": "a",', 400, None),
    ("not an object", b'["a"]', 400, None),
    ("max_tokens a string", {"prompt": "a", "max_tokens": "10"}, 400, "max_tokens"),
    ("max_tokens negative", {"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    ("max_tokens huge", {"prompt": "a", "max_tokens": 10**9}, 400, "max_tokens"),
    ("max_tokens a bool", {"prompt": "a", "max_tokens": True}, 400, "max_tokens"),
    ("temperature negative", {"prompt": "a", "temperature": -0.1}, 400, "temperature"),
    ("temperature a string", {"prompt": "a", "temperature": "hot"}, 400, "temperature"),
    ("temperature NaN", b'{"prompt": "a", "temperature": NaN}', 400, None),
    ("top_p zero", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("top_p above one", {"prompt": "a", "top_p": 1.5}, 400, "top_p"),
    ("empty prompt", {"prompt": ""}, 400, "prompt"),
    ("no prompt", {"max_tokens": 3}, 400, "prompt"),
    ("prompt a number", {"prompt": 123}, 400, "prompt"),
    ("prompt a list of floats", {"prompt": [1.5, 2]}, 400, "prompt"),
    ("too many stop strings", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("stop a number", {"prompt": "a", "stop": 5}, 400, "stop"),
    ("n zero", {"prompt": "a", "n": 0}, 400, "n"),
    ("seed negative", {"prompt": "a", "seed": -3}, 400, "seed"),
    ("stream a string", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("prompt longer than the context", {"prompt": "word " * 40}, 400, "prompt"),
    ("logit_bias id out of range", {"prompt": "a", "logit_bias": {"50257": 1}}, 400, "logit_bias"),
    ("logit_bias id not a number", {"prompt": "a", "logit_bias": {"the": 1}}, 400, "logit_bias"),
    ("logit_bias above 100", {"prompt": "a", "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("presence_penalty above 2", {"prompt": "a", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("frequency_penalty a string", {"prompt": "a", "frequency_penalty": "x"}, 400, "frequency_penalty"),
    ("min_p above 1", {"prompt": "a", "min_p": 1.5}, 400, "min_p"),
    ("body over the limit", {"prompt": "a" * 5000}, 413, None),
]


@pytest.mark.parametrize("case, body, status, param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_an_openai_shaped_4xx(client, case, body, status, param):
    if isinstance(body, bytes):
        r = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        r = post(client, **body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param"} and error["param"] == param
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in r.text


def test_unknown_fields_are_ignored_and_unknown_routes_are_json(client):
    assert post(client, prompt="a", max_tokens=2, logit_bias={"1": 2}, user="me", best_of=1).status_code == 200
    for r in (client.get("/v2/nothing"), client.get("/v1/completions")):
        assert r.status_code in (404, 405) and r.json()["error"]["message"]


MIXED = [  # prompts of different lengths, options, seeds and max_tokens
    dict(prompt="Once", max_tokens=8, temperature=0.9, seed=5),
    dict(prompt="A longer prompt than the others, with many more tokens in it", max_tokens=12, temperature=0.7,
         top_k=20, seed=8),
    dict(prompt="Same length", max_tokens=6, top_p=0.9, presence_penalty=0.5),  # unseeded
    dict(prompt="x", max_tokens=10, temperature=1.2, frequency_penalty=0.3, seed=2, n=2),
]


def test_requests_of_any_prompts_options_and_seeds_share_a_batch(client, sess):
    before = health(client)
    results = {}
    with LongStream(client):
        threads = [threading.Thread(target=lambda i=i, body=body: results.update({i: post(client, **body)}))
                   for i, body in enumerate(MIXED)]
        for t in threads:
            t.start()
        wait_health(client, lambda s: s["queued"] == len(MIXED))
    for t in threads:
        t.join()
    after = health(client)
    assert [results[i].status_code for i in range(len(MIXED))] == [200] * len(MIXED)
    assert (after["batches"] - before["batches"], after["rows"] - before["rows"]) == (2, 1 + 5)  # the long one, then 1
    for i, body in enumerate(MIXED):
        choices = results[i].json()["choices"]
        assert results[i].json()["usage"]["completion_tokens"] <= body["max_tokens"] * body.get("n", 1)
        if "seed" not in body:
            continue
        options = {k: v for k, v in body.items() if k not in ("prompt", "max_tokens", "n")}
        expected = gpt2.generate(sess, prefix=body["prompt"], length=body["max_tokens"], nsamples=body.get("n", 1),
                                 batch_size=body.get("n", 1), include_prefix=False, return_as_list=True, **options)
        assert [c["text"].lstrip("\n") for c in choices] == expected  # each row drew what it draws alone


def _run_with_late_jobs(sess, batcher, make_late, events):
    """Run a seeded 12-token job on `batcher` (then stopped); at its first event, submit the jobs
    `make_late(emit_of)` makes, so they arrive mid-batch. Returns (text by (key, row), [(key, event)]
    of the first `events` "done" or "error" events, in order)."""
    from gpt2_simple.generation.options import SamplingOptions
    from gpt2_simple.serving.batcher import Job

    texts, finished, all_done, late = {}, [], threading.Event(), []

    def emit_of(key):
        def emit(event):
            if event[0] == "text":
                texts[key, event[1]] = texts.get((key, event[1]), "") + event[2]
            else:  # "done", or an "error" the callers' assertions show
                finished.append((key, event))
                if len(finished) == events:
                    all_done.set()
        return emit

    def first(event):
        if not late:
            late.extend(make_late(emit_of))
            for job in late:
                batcher.submit(job)
        emit_of("first")(event)

    try:
        batcher.submit(Job(sess.encoder.encode("Busy"), 1, SamplingOptions(), first, max_tokens=12, seed=5))
        assert all_done.wait(120), finished
    finally:
        batcher.stop()
    return texts, finished


def test_requests_that_arrive_mid_batch_join_it_and_draw_what_they_draw_alone(sess):
    # Continuous batching: jobs waiting when a chunk of the running batch returns join it (one batch,
    # grown from 1 row to 4), with a longer prompt, other options and their own seeds; each row
    # draws what generate(seed=...) draws alone. Before, they waited for the first batch to end.
    from gpt2_simple.generation.options import SamplingOptions
    from gpt2_simple.serving.batcher import Batcher, Job

    batcher = Batcher(sess.sampler, sess.encoder).start()
    late = [("A longer prompt than the first one, by some way", SamplingOptions(temperature=0.7, top_k=20), 10, 8, 2),
            ("x", SamplingOptions(temperature=1.2, frequency_penalty=0.3), 6, 2, 1)]
    texts, finished = _run_with_late_jobs(sess, batcher, lambda emit_of: [
        Job(sess.encoder.encode(p), n, o, emit_of(i), max_tokens=length, seed=seed)
        for i, (p, o, length, seed, n) in enumerate(late)], 4)
    assert sorted(e[0] for _, e in finished) == ["done"] * 4, finished
    assert (batcher.batches, batcher.rows) == (1, 4)  # they joined the first batch
    for i, (prompt, options, length, seed, n) in enumerate(late):
        expected = gpt2.generate(sess, prefix=prompt, length=length, nsamples=n, batch_size=n, seed=seed,
                                 temperature=options.temperature, top_k=options.top_k,
                                 frequency_penalty=options.frequency_penalty, include_prefix=False, return_as_list=True)
        assert [texts.get((i, row), "").lstrip("\n") for row in range(n)] == expected


def test_a_job_that_cannot_join_yet_is_not_overtaken_by_newer_ones(sess):
    # Joining is in queue order: a waiting job of 2 rows cannot join a 2-row batch that runs 1, and
    # the 1-row job behind it must not take the free row; the batch drains and the older job runs
    # next. Otherwise a job could wait forever while newer ones keep joining.
    from gpt2_simple.generation.options import SamplingOptions
    from gpt2_simple.serving.batcher import Batcher, Job

    batcher = Batcher(sess.sampler, sess.encoder, max_rows=2).start()
    _, finished = _run_with_late_jobs(sess, batcher, lambda emit_of: [
        Job(sess.encoder.encode("Two rows"), 2, SamplingOptions(), emit_of("older"), max_tokens=4),
        Job(sess.encoder.encode("One"), 1, SamplingOptions(), emit_of("newer"), max_tokens=4)], 4)
    assert [(key, e[0]) for key, e in finished] == [("first", "done"), ("older", "done"), ("older", "done"),
                                                    ("newer", "done")]
    assert (batcher.batches, batcher.rows) == (3, 4)


def test_a_full_queue_answers_503_with_retry_after(client):
    results = []
    with LongStream(client):
        threads = [threading.Thread(target=lambda i=i: results.append(post(client, prompt="x" * (i + 1), max_tokens=2)))
                   for i in range(MAX_QUEUE)]
        for t in threads:
            t.start()
        wait_health(client, lambda s: s["queued"] == MAX_QUEUE)
        refused = post(client, prompt="one more", max_tokens=2)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["type"] == "server_busy"
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * MAX_QUEUE


def test_a_client_that_disconnects_frees_its_place_at_once(client):
    with LongStream(client) as running:
        with client.stream("POST", "/v1/completions", json={"prompt": "Second", "max_tokens": LONG, "stream": True}):
            wait_health(client, lambda s: s["queued"] == 1)  # waiting behind the running one
        state = wait_health(client, lambda s: s["queued"] == 0)  # gone from the queue at once...
        assert state["running"] == 1  # ...while the first still runs
        before = state["tokens"]
    # The running stream closed mid-stream: its rows end at the next chunk, not after LONG tokens.
    state = wait_health(client, lambda s: s["running"] == 0)
    assert state["tokens"] - before < LONG // 4 and running.response.is_closed


def _rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _load_round(server, clients=16, requests=5):
    """`clients` threads x `requests` each: plain, streamed, and streams dropped after one event."""
    statuses = []

    def one_client(c):
        with httpx.Client(base_url=server, headers=AUTH, timeout=120) as http:
            for k in range(requests):
                body = {"prompt": f"Client {c} request {k}", "max_tokens": 12, "top_k": 20}
                kind = (c + k) % 3
                if kind == 0:
                    statuses.append(http.post("/v1/completions", json=body).status_code)
                    continue
                with http.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
                    statuses.append(r.status_code)
                    for line in r.iter_lines():
                        if kind == 2 and line.startswith("data: {"):
                            break  # disconnect mid-stream

    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


@pytest.mark.slow
def test_load_every_request_gets_200_or_503_and_memory_stays_bounded(server, client):
    statuses = _load_round(server)  # the first round also compiles the batch sizes it meets
    rss = _rss_mib()
    for _ in range(2):
        statuses += _load_round(server)
    assert len(statuses) == 3 * 16 * 5 and set(statuses) <= {200, 503} and statuses.count(200) >= 3 * 16
    state = wait_health(client, lambda s: s["queued"] == 0 and s["running"] == 0)
    assert state["status"] == "ok"
    assert _rss_mib() - rss < 48  # MiB after 160 more requests (measured: about 15)
