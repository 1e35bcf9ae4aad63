"""What real clients send: the openai SDK and LangChain (`langchain-openai`) against the server.

- `stream_options: {"include_usage": true}` (LangChain's `stream_usage=True`) makes a stream end with
  one chunk of token counts and no choices, as OpenAI sends it; the counts equal the whole answer's.
- Chat `logprobs` and `top_logprobs` in OpenAI's chat shape, plain and streamed.
- `POST /v1/responses`, the SDK's newer API, plain and streamed.
The served model is conftest's tiny one; end-of-text is banned where a count must be exact.
"""
import pytest
from serving import client_fixture, url_of

KEY = "clients-key"
NO_EOT = {"50256": -100}
client = client_fixture(KEY)


@pytest.fixture(scope="module")
def sdk(client):
    import openai

    return openai.OpenAI(base_url=url_of(client) + "/v1", api_key=KEY, max_retries=0)


def _counted(chunks):
    """The chunks that carry usage; each must be the last one, without choices."""
    counted = [c for c in chunks if c.usage is not None]
    assert len(counted) == 1 and counted[0] is chunks[-1] and counted[0].choices == [], chunks[-2:]
    return counted[0].usage


def test_a_streamed_completion_ends_with_one_usage_chunk(sdk, served_sess):
    chunks = list(sdk.completions.create(model="tiny", prompt="Hello world", max_tokens=7, seed=1, stream=True,
                                         logit_bias=NO_EOT, stream_options={"include_usage": True}))
    usage = _counted(chunks)
    prompt = len(served_sess.encoder.encode("Hello world"))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt, 7, prompt + 7)
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "length"
    plain = list(sdk.completions.create(model="tiny", prompt="Hello world", max_tokens=7, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices  # not asked: no usage chunk


def test_a_streamed_chat_ends_with_the_usage_of_its_whole_answer(sdk):
    request = dict(model="tiny", messages=[{"role": "user", "content": "Say something"}], max_tokens=12, seed=3)
    whole = sdk.chat.completions.create(**request).usage
    usage = _counted(list(sdk.chat.completions.create(**request, stream=True,
                                                      stream_options={"include_usage": True})))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == \
        (whole.prompt_tokens, whole.completion_tokens, whole.total_tokens)
    assert whole.prompt_tokens > 0 and whole.completion_tokens > 0


def test_langchain_stream_usage_reports_the_counts(client, sdk):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=url_of(client) + "/v1", api_key=KEY, model="tiny", max_tokens=9, seed=4,
                      stream_usage=True, max_retries=0)
    total = None
    for piece in chat.stream("Tell me a story"):
        total = piece if total is None else total + piece
    whole = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me a story"}],
                                        max_tokens=9, seed=4).usage
    assert total.usage_metadata["input_tokens"] == whole.prompt_tokens
    assert total.usage_metadata["output_tokens"] == whole.completion_tokens
    assert total.content == sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=9,
        seed=4).choices[0].message.content


def test_langchain_invoke_stream_and_batch_agree_with_a_seed(client):
    from langchain_openai import ChatOpenAI, OpenAI

    options = dict(base_url=url_of(client) + "/v1", api_key=KEY, model="tiny", max_tokens=6, seed=8, max_retries=0)
    for model, read in ((ChatOpenAI(**options), lambda m: m.content), (OpenAI(**options), lambda t: t)):
        whole = read(model.invoke("Once upon a time"))
        assert "".join(read(piece) for piece in model.stream("Once upon a time")) == whole
        assert [read(m) for m in model.batch(["Once upon a time", "Once upon a time"])] == [whole, whole]


@pytest.mark.parametrize("body, param", [
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, "stream_options.continuous_usage_stats"),
    ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
])
def test_stream_options_it_cannot_honour_are_refused_by_name(client, body, param):
    r = client.post("/v1/completions", json=dict(body, prompt="a", max_tokens=1))
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ---------------------------------------------------------------------------------------------
# Chat logprobs, in OpenAI's chat shape

NO_STOP = {"50256": -100, "198": -100}  # no end-of-text and no "\n": the reply cannot end before max_tokens
ASK = [{"role": "user", "content": "Name a colour"}]


def test_chat_logprobs_have_one_entry_a_token_with_the_asked_alternatives(sdk, client, served_sess):
    reply = sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, seed=5, logit_bias=NO_STOP,
                                        logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert choice.finish_reason == "length" and len(content) == reply.usage.completion_tokens == 6
    assert b"".join(bytes(e.bytes) for e in content) == choice.message.content.encode("utf-8")
    for e in content:
        assert len(e.top_logprobs) == 3 and e.logprob <= e.top_logprobs[0].logprob + 1e-6
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
    # The same numbers as the completions endpoint gives for the rendered prompt and the same draws.
    prompt = client.post("/tokenize", json={"messages": ASK}).json()["tokens"]
    same = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6, "seed": 5, "logprobs": 3,
                                                "logit_bias": NO_STOP}).json()["choices"][0]
    assert same["text"] == choice.message.content
    assert [e.logprob for e in content] == pytest.approx(same["logprobs"]["token_logprobs"], abs=1e-6)
    streamed = [c for c in sdk.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, seed=5, stream=True,
                                                       logit_bias=NO_STOP, logprobs=True, top_logprobs=3)]
    scored = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert len(scored) == 1 and scored[0].content == content  # with the choice's last chunk


def test_langchain_chat_logprobs(client):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=url_of(client) + "/v1", api_key=KEY, model="tiny", max_tokens=5, seed=6,
                      logprobs=True, top_logprobs=2, max_retries=0).bind(logit_bias=NO_STOP)
    content = chat.invoke("Hello there").response_metadata["logprobs"]["content"]
    assert len(content) == 5 and all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in content)


# ---------------------------------------------------------------------------------------------
# The Responses API, as the openai SDK's `client.responses` sends it

def test_responses_answer_plainly_and_streamed_as_the_chat_of_the_same_messages(sdk):
    asked = dict(instructions="Be brief.", input="Say hello", max_output_tokens=8, temperature=0.9, top_p=0.95)
    answer = sdk.responses.create(model="tiny", extra_body={"seed": 7}, **asked)
    chat = sdk.chat.completions.create(model="tiny", max_tokens=8, temperature=0.9, top_p=0.95, seed=7, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    assert answer.output_text == chat.choices[0].message.content
    done = chat.choices[0].finish_reason == "stop"
    assert answer.status == ("completed" if done else "incomplete")
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                        chat.usage.completion_tokens)
    events = list(sdk.responses.create(model="tiny", stream=True, extra_body={"seed": 7}, **asked))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if done else "response.incomplete"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer.output_text
    assert events[-1].response.output_text == answer.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_take_a_list_of_messages_with_text_parts(sdk):
    answer = sdk.responses.create(model="tiny", max_output_tokens=4, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"role": "user", "content": "And now?"}])
    assert answer.usage.output_tokens <= 4 and answer.output[0].role == "assistant"


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "store": True}, "store"),
    ({"input": "x", "text": {"format": {"type": "json_object"}}}, "text"),
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
    ({"input": ""}, "input"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_responses_refuse_what_they_cannot_do_by_name(client, body, param):
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_langchain_over_the_responses_api(client):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=url_of(client) + "/v1", api_key=KEY, model="tiny", max_tokens=6, use_responses_api=True,
                      max_retries=0)
    whole = chat.invoke("Say hello")
    streamed = None
    for piece in chat.stream("Say hello"):
        streamed = piece if streamed is None else streamed + piece
    assert isinstance(whole.text, str) and isinstance(streamed.text, str)  # parsed, plain and streamed
    assert whole.usage_metadata["output_tokens"] <= 6
    assert streamed.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"] > 0
