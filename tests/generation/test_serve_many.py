"""Many fine-tunes in one server: LoRA runs over one base, chosen by `model`, mixed in one batch."""
import json
import os
import re
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

import gpt2_simple as gpt2
import runs
from gpt2_simple.formats.folders import load_model
from gpt2_simple.generation.options import SamplingOptions
from gpt2_simple.model.logprobs import token_logprobs
from gpt2_simple.serving.batcher import Job
from gpt2_simple.serving.serve import build_app
from serving import running_server

pytestmark = pytest.mark.slow
# (rank, lora_save) of the four LoRA runs a0..a3: both kinds of save, and ranks the table pads to its largest.
ADAPTERS = [(2, "merged"), (4, "adapters"), (4, "merged"), (8, "adapters")]
NAMES = ["a0", "a1", "a2", "a3"]


@pytest.fixture(scope="module")
def many(tmp_path_factory, real_vocab_dir):
    """(root, model_dir, checkpoint_dir): a tiny base `tiny`, four LoRA runs over it (2 steps at a high learning
    rate, so each adapter moves its logits well apart), and a full fine-tune `full`."""
    root = tmp_path_factory.mktemp("many")
    model_dir = runs.make_tiny_model(root, real_vocab_dir)
    data, checkpoint_dir = runs.write_text(root), str(root / "checkpoint")
    options = dict(runs.FAST, steps=2, model_dir=model_dir, checkpoint_dir=checkpoint_dir, print_every=10)
    for i, (rank, save) in enumerate(ADAPTERS):
        gpt2.finetune(gpt2.start_tf_sess(), data, run_name=NAMES[i], lora_rank=rank, lora_save=save,
                      learning_rate=5e-2, seed=i, **options)
    gpt2.finetune(gpt2.start_tf_sess(), data, run_name="full", learning_rate=1e-2, seed=9, **options)
    return root, model_dir, checkpoint_dir


def _alone(folder):
    sess = gpt2.start_tf_sess()
    return gpt2.load_gpt2(sess, run_name=os.path.basename(folder), checkpoint_dir=os.path.dirname(folder))


def test_rows_of_four_adapters_and_the_base_in_one_batch_equal_each_run_alone(many):
    root, model_dir, checkpoint_dir = many
    catalog = build_app(None, runs=NAMES + ["full"], checkpoint_dir=checkpoint_dir).state.catalog
    assert list(catalog.entries) == ["tiny"] + NAMES + ["full"] and catalog.first == "a0"
    base, full = catalog.engines
    assert base.model is catalog.entries["a3"].sess.model and full.model is not base.model  # one copy of the base
    assert all(v.dtype == tf.float32 and "lora" not in name for name, v in base.model.weights.items())  # none merged
    models = ["tiny"] + NAMES
    folders = [os.path.join(model_dir, "tiny")] + [os.path.join(checkpoint_dir, n) for n in NAMES]

    tokens = np.random.default_rng(0).integers(0, 50257, size=(len(models), 12)).astype(np.int32)
    rows = base.table.rows([catalog.entries[m].adapter for m in models])
    mixed = base.model.forward(tf.constant(tokens), adapters=rows)[0].numpy()
    alone = [load_model(f)(tokens[i:i + 1]).numpy()[0] for i, f in enumerate(folders)]
    for i, logits in enumerate(alone):
        np.testing.assert_allclose(mixed[i], logits, rtol=0, atol=1e-5 * np.abs(logits).max())
    assert min(np.abs(alone[i] - alone[0]).max() for i in range(1, 5)) > 1e-2  # the adapters do change the logits

    # One batch of the worker: each row draws what its run's own generate draws with that seed.
    texts, batcher = {}, base.batcher
    for i, m in enumerate(models):
        served = catalog.entries[m]
        job = Job(tokens=served.enc.encode("The quick"), n=1, options=SamplingOptions.make(temperature=0.9),
                  max_tokens=10, seed=20 + i, adapter=served.adapter,
                  emit=lambda event, m=m: texts.__setitem__(m, texts.get(m, "") + event[2]) if event[0] == "text" else 0)
        batcher.submit(job)
    batcher.start()
    assert batcher.wait_idle(120) and (batcher.batches, batcher.rows) == (1, 5)
    batcher.stop()
    for i, (m, folder) in enumerate(zip(models, folders)):
        sess = _alone(folder) if m != "tiny" else gpt2.load_gpt2(gpt2.start_tf_sess(), model_name="tiny",
                                                                  model_dir=model_dir)
        expected = gpt2.generate(sess, prefix="The quick", length=10, temperature=0.9, seed=20 + i,
                                 include_prefix=False, return_as_list=True)[0]
        assert texts[m] == expected, m
    assert len(set(texts.values())) > 1


def test_runs_that_cannot_share_are_refused_at_start_naming_both(many, real_vocab_dir):
    root, model_dir, checkpoint_dir = many
    runs.make_tiny_model(root, real_vocab_dir, name="other", seed=5)
    gpt2.finetune(gpt2.start_tf_sess(), runs.write_text(root), run_name="b0", lora_rank=2, learning_rate=5e-2,
                  **dict(runs.FAST, steps=1, model_name="other", model_dir=model_dir, checkpoint_dir=checkpoint_dir))
    with pytest.raises(ValueError) as e:
        build_app(None, runs=["a0", "b0"], checkpoint_dir=checkpoint_dir)
    message = str(e.value)
    assert "\n" not in message and os.path.join("models", "other") in message and os.path.join("models", "tiny") in message
    with pytest.raises(ValueError, match=r"max_adapters=2"):
        build_app(None, runs=NAMES[:3], checkpoint_dir=checkpoint_dir, max_adapters=2)
    odd = os.path.join(checkpoint_dir, "odd")
    shutil.copytree(os.path.join(checkpoint_dir, "a1"), odd)
    with open(os.path.join(odd, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    vocab["!"], vocab['"'] = vocab['"'], vocab["!"]
    with open(os.path.join(odd, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with pytest.raises(ValueError, match=r"another vocabulary"):
        build_app(None, runs=["a0", "odd"], checkpoint_dir=checkpoint_dir)
    # A merged LoRA save whose base is gone is still served, alone, as its merged weights.
    shutil.rmtree(os.path.join(model_dir, "other"))
    catalog = build_app(None, runs=["b0"], checkpoint_dir=checkpoint_dir).state.catalog
    assert list(catalog.entries) == ["b0"] and catalog.engines[0].table is None


@pytest.fixture(scope="module")
def server(many):
    """The four LoRA runs and the full fine-tune in one server that allows adapter updates."""
    with running_server(None, runs=NAMES[:3] + ["full"], checkpoint_dir=many[2], allow_adapter_updates=True,
                        max_adapters=4) as (url, app):
        yield url, app


def _client(url):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_the_model_field_picks_the_run_and_an_unknown_one_is_a_404(server, many, enc):
    import openai

    url, app = server
    ai = _client(url)
    listed = {m.id: m for m in ai.models.list().data}
    assert list(listed) == ["tiny", "a0", "a1", "a2", "full"]
    assert listed["a1"].parent == "tiny" and listed["a1"].root == os.path.join(many[2], "a1")
    assert listed["tiny"].parent is None and listed["full"].parent is None
    for name in ("a1", "full"):
        out = ai.completions.create(model=name, prompt="The quick", max_tokens=8, temperature=0.9, seed=4)
        expected = gpt2.generate(_alone(os.path.join(many[2], name)), prefix="The quick", length=8, temperature=0.9,
                                 seed=4, include_prefix=False, return_as_list=True)[0]
        assert out.model == name and out.choices[0].text == expected
    default = ai.completions.create(model="a0", prompt="The quick", max_tokens=8, seed=4)
    import httpx
    plain = httpx.post(url + "/v1/completions", json={"prompt": "The quick", "max_tokens": 8, "seed": 4}).json()
    assert plain["choices"][0]["text"] == default.choices[0].text  # no `model`: the first run named
    with pytest.raises(openai.NotFoundError) as e:
        ai.chat.completions.create(model="a9", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert e.value.code == "model_not_found" and "a9" in e.value.message
    # llama.cpp's per-request adapter: id 1 is the second LoRA run (a1).
    alias = ai.completions.create(model="tiny", prompt="The quick", max_tokens=8, temperature=0.9, seed=4,
                                  extra_body={"lora": [{"id": 0, "scale": 0}, {"id": 1, "scale": 1.0}]})
    named = ai.completions.create(model="a1", prompt="The quick", max_tokens=8, temperature=0.9, seed=4)
    assert alias.choices[0].text == named.choices[0].text
    with pytest.raises(openai.BadRequestError, match="lora"):
        ai.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"lora": [{"id": 7, "scale": 1}]})
    # The gallery of each run: `?model=` picks it, and its fresh samples come from that run's adapter.
    assert httpx.get(url + "/gallery/data").json()["run"] == "a0"
    assert httpx.get(url + "/gallery/data?model=a1").json()["run"] == "a1"
    assert httpx.get(url + "/gallery/data?model=zz").status_code == 404
    fresh = httpx.post(url + "/gallery/generate?model=a1", json={"n": 1, "length": 8, "seed": 4, "prompt": "The quick"},
                       timeout=120).json()["samples"][0]["text"]
    same = httpx.post(url + "/v1/completions", json={"model": "a1", "prompt": [50256] + enc.encode("The quick"),
                                                     "max_tokens": 8, "seed": 4, "temperature": 0.9, "top_k": 40},
                      timeout=120).json()["choices"][0]["text"]
    assert fresh == same
    # Scores come from the run's own adapter too.
    ids = enc.encode("The quick brown fox jumps")
    scored = ai.completions.create(model="a2", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    own = token_logprobs(load_model(os.path.join(many[2], "a2")), tf.constant([ids])).numpy()[0]
    np.testing.assert_allclose(scored.choices[0].logprobs.token_logprobs[1:], own, rtol=0, atol=1e-4)
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r"gpt2_simple_completion_tokens_total\{model=\"a1\"\} [1-9]", metrics)


def test_an_adapter_loads_and_unloads_under_traffic_without_a_5xx(server, many):
    import httpx
    import openai

    url, app = server
    ai = _client(url)
    statuses, stop = [], threading.Event()

    def traffic(model):  # a load that makes the table bigger recompiles the loops: answers may take seconds
        while not stop.is_set():
            try:
                r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": "A stitch", "max_tokens": 6},
                               timeout=120)
                statuses.append((model, r.status_code))
            except httpx.HTTPError as e:  # counted, so that the test fails on it
                statuses.append((model, repr(e)))

    threads = [threading.Thread(target=traffic, args=(m,)) for m in ("a0", "full")]
    for t in threads:
        t.start()
    try:
        load = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": os.path.join(
            many[2], "a3")}, timeout=120)
        assert load.status_code == 200 and "late" in load.text
        late = ai.completions.create(model="late", prompt="The quick", max_tokens=8, temperature=0.9, seed=4)
        expected = gpt2.generate(_alone(os.path.join(many[2], "a3")), prefix="The quick", length=8, temperature=0.9,
                                 seed=4, include_prefix=False, return_as_list=True)[0]
        assert late.choices[0].text == expected
        for body, field in (({"lora_name": "x", "lora_path": "/no/such/run"}, "lora_path"),
                            ({"lora_name": "y", "lora_path": os.path.join(many[2], "full")}, "lora_path"),
                            ({"lora_name": "a0", "lora_path": os.path.join(many[2], "a3")}, "lora_name")):
            bad = httpx.post(url + "/v1/load_lora_adapter", json=body, timeout=60)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == field
        # Unloading waits for the row in flight: the stream ends whole, then the name is gone.
        stream = ai.completions.create(model="late", prompt="The quick", max_tokens=20, stream=True, seed=1)
        first = next(iter(stream))
        unload = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "late"}, timeout=120)
        rest = list(stream)
        assert unload.status_code == 200
        assert first.choices[0].text is not None and rest[-1].choices[0].finish_reason == "length"
        with pytest.raises(openai.NotFoundError):
            ai.completions.create(model="late", prompt="x", max_tokens=2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert statuses and all(code == 200 for _, code in statuses), statuses


def test_adapter_updates_are_off_unless_allowed(many):
    import httpx

    with running_server(None, runs=["a0"], checkpoint_dir=many[2]) as (url, app):
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": many[2]})
        assert r.status_code == 404 and "--allow_adapter_updates" in r.json()["error"]["message"]
        # One LoRA run alone is served as before runs could share a server: one model, whatever `model` says.
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["a0"]
        out = httpx.post(url + "/v1/completions", json={"model": "anything", "prompt": "Hi", "max_tokens": 2})
        assert out.status_code == 200 and out.json()["model"] == "a0"
