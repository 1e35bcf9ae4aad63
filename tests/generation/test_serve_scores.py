"""The server's scores and token prompts: `logprobs`, `echo`, `max_tokens: 0`, ids as prompts, refused fields.

Every number is checked against `log_softmax` of the model's own logits, computed here in process.
"""
import json

import numpy as np
import pytest
import tensorflow as tf
from serving import client_fixture

KEY = "scores-key"


@pytest.fixture(scope="module")
def sess(served_sess):
    return served_sess


client = client_fixture(KEY, max_tokens=64)


def reference(sess, ids):
    """log_softmax of the model's logits for `ids`: [len(ids), n_vocab] (row i predicts ids[i + 1])."""
    logits = sess.model.forward(tf.constant([ids], tf.int32))[0]
    return tf.nn.log_softmax(logits[0], axis=-1).numpy()


def check_scores(sess, ids, logprobs, k):
    """`logprobs` (OpenAI's object, echoed from the first token) equals the reference for `ids`."""
    ref = reference(sess, ids)
    enc = sess.encoder
    assert logprobs["tokens"] == [enc.decode([t]) for t in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    np.testing.assert_allclose(logprobs["token_logprobs"][1:], [ref[i - 1, ids[i]] for i in range(1, len(ids))],
                               atol=1e-4)
    for i in range(1, len(ids)):
        best = np.argsort(-ref[i - 1])[:k]
        expected = {enc.decode([int(t)]): ref[i - 1, t] for t in best}
        expected.setdefault(enc.decode([ids[i]]), ref[i - 1, ids[i]])
        top = logprobs["top_logprobs"][i]
        assert set(top) == set(expected)
        np.testing.assert_allclose([top[t] for t in expected], list(expected.values()), atol=1e-4)
    text = enc.decode(ids)
    offsets = logprobs["text_offset"] + [len(text)]
    assert [text[a:b] for a, b in zip(offsets, offsets[1:])] == logprobs["tokens"]


def test_echo_with_max_tokens_0_scores_the_prompt_only(client, sess):
    prompt = "The quick brown fox jumps over"
    ids = sess.encoder.encode(prompt)
    out = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 3})
    assert out.status_code == 200, out.text
    choice = out.json()["choices"][0]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    check_scores(sess, ids, choice["logprobs"], 3)
    assert out.json()["usage"]["completion_tokens"] == 0


def test_lm_eval_shape_token_ids_echo_and_one_greedy_token(client, sess):
    ids = sess.encoder.encode("A stitch in time saves")
    body = {"prompt": [ids, ids[:3]], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234}
    out = client.post("/v1/completions", json=body).json()
    for choice, prompt in zip(out["choices"], [ids, ids[:3]]):
        lp = choice["logprobs"]
        drawn = sess.encoder.encode(choice["text"][len(sess.encoder.decode(prompt)):], allow_special=True) or [
            sess.encoder.eot_token]
        full = prompt + drawn[:1]
        assert len(lp["tokens"]) == len(prompt) + 1
        check_scores(sess, full, lp, 1)
        assert int(np.argmax(reference(sess, prompt)[-1])) == full[-1]  # temperature 0: the argmax


def test_logprobs_without_echo_score_the_completion_from_the_prompt_offset(client, sess):
    prompt = "Once upon"
    ids = sess.encoder.encode(prompt)
    out = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6, "logprobs": 2, "seed": 3}).json()
    lp = out["choices"][0]["logprobs"]
    drawn = sess.sampler.sample([ids], 6, seed=3 * 1_000_003)[0].tolist()  # the server's draws for seed 3
    assert lp["tokens"] == [sess.encoder.decode([t]) for t in drawn]
    assert lp["text_offset"][0] == len(prompt)
    full = ids + drawn
    ref = reference(sess, full)
    np.testing.assert_allclose(lp["token_logprobs"], [ref[len(ids) + i - 1, drawn[i]] for i in range(6)], atol=1e-4)


def test_a_stopped_choice_is_scored_up_to_the_token_where_its_text_ends(client):
    full = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 20, "seed": 9}).json()
    text = full["choices"][0]["text"]
    stop = text[8:11]
    out = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 20, "seed": 9, "stop": stop,
                                               "logprobs": 0}).json()["choices"][0]
    names = out["logprobs"]["tokens"]
    assert out["finish_reason"] == "stop" and out["text"] == text[:text.index(stop)]
    assert len("".join(names[:-1])) <= len(out["text"]) < len("".join(names))  # the last one began the stop
    assert "".join(names).startswith(out["text"]) and len(names) < 20


def test_streamed_logprobs_and_echo_equal_the_plain_answer(client, sess):
    body = {"prompt": "Hello there", "max_tokens": 5, "logprobs": 2, "echo": True, "seed": 11}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]
    with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    choices = [e["choices"][0] for e in events]
    assert "".join(c["text"] for c in choices) == plain["text"]
    assert choices[0]["text"] == "Hello there"
    assert [c["logprobs"] for c in choices if c["logprobs"]] == [plain["logprobs"]]


def test_the_openai_client_reads_logprobs(client, sess):
    from openai import OpenAI

    ai = OpenAI(base_url=str(client.base_url) + "/v1", api_key=KEY)
    ids = sess.encoder.encode("All that glitters")
    out = ai.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=5)
    check_scores(sess, ids, out.choices[0].logprobs.model_dump(), 5)


def test_the_scoring_pass_never_retraces(client, sess):
    scorer = client.app.state.catalog.default.batcher.scorer
    for prompt in (["a b c"], [[1, 2, 3, 4, 5, 6, 7]], ["x", "y z w"]):
        assert client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "logprobs": 0,
                                                    "echo": True}).status_code == 200
    assert scorer.tracing_count == 1


BAD = [
    ("an id out of range", {"prompt": [1, 50257]}, "prompt", "50257"),
    ("a negative id", {"prompt": [[5], [-1]]}, "prompt", "-1"),
    ("logprobs above the limit", {"prompt": "a", "logprobs": 11}, "logprobs", "11"),
    ("scored text beyond the context", {"prompt": "a", "logprobs": 1, "max_tokens": 40}, "max_tokens", "40"),
    ("best_of above n", {"prompt": "a", "best_of": 3}, "best_of", "3"),
    ("a suffix", {"prompt": "a", "suffix": "end"}, "suffix", "end"),
    ("echo a string", {"prompt": "a", "echo": "yes"}, "echo", "yes"),
]


@pytest.mark.parametrize("case, body, param, value", BAD, ids=[b[0] for b in BAD])
def test_bad_scores_and_unsupported_fields_are_refused_by_name(client, case, body, param, value):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and value in r.json()["error"]["message"]


def test_neutral_values_of_unimplemented_fields_are_accepted(client):
    langchain = {"prompt": "a", "max_tokens": 2, "temperature": 0.7, "top_p": 1, "frequency_penalty": 0,
                 "presence_penalty": 0, "n": 1, "logit_bias": {}, "seed": None, "logprobs": None, "best_of": 1,
                 "suffix": None, "user": "me", "echo": False, "stream_options": None}
    out = client.post("/v1/completions", json=langchain)
    assert out.status_code == 200 and out.json()["choices"][0]["logprobs"] is None
