"""The server's chat, tokenizer and metrics routes: the openai client's chat.completions, templates
(the built-in one and Jinja), `/tokenize`, `/detokenize`, `/tokenizer_info`, and `/metrics` counts.
"""
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import client_fixture, running_server, url_of

import gpt2_simple as gpt2
from gpt2_simple.formats.chat_template import PRESETS
from gpt2_simple.serving.openai_chat import ChatTemplate

KEY = "chat-key"
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def sess(served_sess):
    return served_sess


client = client_fixture(KEY, max_tokens=64)


@pytest.fixture(scope="module")
def server(client):
    return url_of(client)


def test_templates_render_and_find_the_next_turn():
    default = ChatTemplate()
    assert default.render(MESSAGES) == "system: Be brief.\nuser: Hello there\nassistant:"
    assert default.turn_end == "\nuser:"  # as a model not trained on chats writes the next turn
    chatml = ChatTemplate(CHATML)
    assert chatml.render(MESSAGES[1:]) == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    assert chatml.turn_end == "<|im_end|>"
    with pytest.raises(ValueError, match="chat_template"):
        ChatTemplate("{% for m in messages %}")
    strict = ChatTemplate("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system "
                          "role') }}{% endif %}{{ m.content }}{% endfor %}")
    with pytest.raises(Exception, match="no system role") as refused:
        strict.render(MESSAGES)
    assert (refused.value.status, refused.value.param) == (400, "messages")


def test_serve_names_a_missing_chat_template(tmp_path):
    with pytest.raises(FileNotFoundError, match="chat_template"):
        gpt2.serve(chat_template=str(tmp_path / "missing.jinja"))


def test_the_openai_client_chats_as_generate_continues_the_rendered_prompt(server, sess):
    from openai import OpenAI

    ai = OpenAI(base_url=server + "/v1", api_key=KEY)
    prompt = ChatTemplate().render(MESSAGES)
    out = ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, seed=5, temperature=0.9, n=2)
    expected = gpt2.generate(sess, prefix=prompt, length=12, temperature=0.9, seed=5, include_prefix=False,
                             stop=["\nuser:", "<|endoftext|>"], return_as_list=True)[0]
    first = out.choices[0]
    assert first.message.role == "assistant" and first.message.content.lstrip("\n") == expected
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.prompt_tokens == len(sess.encoder.encode(prompt))
    pieces = list(ai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, seed=5,
                                             temperature=0.9, stream=True))
    assert pieces[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == first.message.content
    assert pieces[-1].choices[0].finish_reason == first.finish_reason


def test_a_jinja_template_replaces_the_default_and_generation_stops_at_its_next_turn(client, sess):
    # A template whose turn end is text this model writes soon after the prompt, so the stop shows.
    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}{% if m.role == 'assistant' %}SEP{% endif %}"
                "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}bot:{% endif %}")
    prompt = ChatTemplate(template).render(MESSAGES[1:])
    assert prompt == "user: Hello there\nbot:"
    full = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 30, "seed": 2}).json()
    text = full["choices"][0]["text"]
    sep = next(text[i:i + 3] for i in range(4, len(text)) if text[i:i + 3].strip() == text[i:i + 3])
    with running_server(sess, chat_template=template.replace("SEP", sep)) as (url, _):
        answer = httpx.post(url + "/v1/chat/completions", timeout=120,
                            json={"messages": MESSAGES[1:], "max_tokens": 30, "seed": 2}).json()
        info = httpx.get(url + "/tokenizer_info").json()
    assert answer["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": text[:text.index(sep)]},
                                    "logprobs": None, "finish_reason": "stop"}
    assert info["chat_template"] == template.replace("SEP", sep)


CHAT_BAD = [
    ("no messages", {"max_tokens": 2}, "messages"),
    ("a role unknown", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("an image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
    ("tools", {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("json mode", {"messages": MESSAGES, "response_format": {"type": "json_object"}}, "response_format"),
    ("top_logprobs without logprobs", {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ("n zero", {"messages": MESSAGES, "n": 0}, "n"),
]


@pytest.mark.parametrize("case, body, param", CHAT_BAD, ids=[b[0] for b in CHAT_BAD])
def test_bad_chat_requests_name_the_field(client, case, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_neutral_chat_fields_are_accepted(client):
    body = {"messages": MESSAGES, "max_tokens": 2, "tools": [], "tool_choice": "none", "logprobs": False,
            "response_format": {"type": "text"}, "frequency_penalty": 0, "user": "me", "stream_options": None}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_tokenize_detokenize_and_tokenizer_info_in_vllms_shapes(client, sess):
    enc = sess.encoder
    out = client.post("/tokenize", json={"prompt": "Hello world<|endoftext|>", "add_special_tokens": False}).json()
    assert out == {"tokens": enc.encode("Hello world") + [50256], "count": 3, "max_model_len": 32}
    assert client.post("/tokenize", json={"content": "Hello"}).json()["tokens"] == enc.encode("Hello")
    chat = client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    assert chat == enc.encode(ChatTemplate().render(MESSAGES))
    assert client.post("/detokenize", json={"tokens": out["tokens"]}).json() == {"prompt": "Hello world<|endoftext|>"}
    bad = client.post("/detokenize", json={"tokens": [1, 99999]})
    assert bad.status_code == 400 and "99999" in bad.json()["error"]["message"]
    info = client.get("/tokenizer_info").json()
    assert (info["eos_token"], info["max_model_len"], info["chat_template"]) == ("<|endoftext|>", 32, PRESETS["gpt2"])
    card = client.get("/v1/models").json()["data"][0]
    assert (card["max_model_len"], card["root"], card["parent"]) == (32, sess.folder, None)  # vLLM's shape


def scrape(client):
    """{(name, labels as a sorted tuple): value} of every sample /metrics reports."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_tokens_and_latencies(client, sess):
    before = scrape(client)
    client.post("/v1/completions", json={"prompt": "Hi there", "max_tokens": 5})
    with client.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3,
                                                             "stop": "zzzz", "stream": True}) as r:
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
    client.post("/v1/completions", json={"prompt": "a", "max_tokens": -1})
    after = scrape(client)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    requests = "gpt2_simple_requests_total"
    assert grew(requests, endpoint="/v1/completions", status="200") == 1
    assert grew(requests, endpoint="/v1/completions", status="400") == 1
    assert grew(requests, endpoint="/v1/chat/completions", status="200") == 1
    chat_prompt = len(sess.encoder.encode(ChatTemplate().render(MESSAGES)))
    model = client.app.state.catalog.first  # token counts carry the model's name
    assert grew("gpt2_simple_prompt_tokens_total", model=model) == 2 + chat_prompt
    completion = grew("gpt2_simple_completion_tokens_total", model=model)
    assert 5 <= completion <= 8  # 5, and the chat's 3 unless an end of text came first
    assert grew("gpt2_simple_time_to_first_token_seconds_count", model=model) == 2
    assert grew("gpt2_simple_request_seconds_count", endpoint="/v1/completions") == 2
    assert after[("gpt2_simple_queue_depth", ())] == 0 and after[("gpt2_simple_running_rows", ())] == 0
    assert json.loads(client.get("/health").text)["status"] == "ok"
