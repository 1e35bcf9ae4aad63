"""OpenAI's Responses API, `POST /v1/responses`: the openai SDK's newer way to ask, answered as a chat.

This module owns that wire format: `input` (a string, or a list of messages whose content is text
or `input_text`/`output_text` parts) with `instructions` (a system message first), rendered by the
run's chat template and run as a chat completion (`openai_chat.parse_chat`: the same checks,
stops and batching); `max_output_tokens`, `temperature` and `top_p` (and this server's `seed`,
`top_k` and penalties); the `response` object, and its stream of typed events
(`response.created` ... `response.output_text.delta` ... `response.completed`). Tools, stored
conversations and other fields it does not implement are refused by name.
"""
import json
import time
import uuid

from . import openai_api as api
from . import openai_chat as chat_api

# Fields of the Responses API this server does not implement, refused at a value that would change the answer.
REFUSED = {
    "tools": lambda v, body: bool(v),
    "tool_choice": lambda v, body: v not in (None, "none", "auto"),
    "previous_response_id": lambda v, body: v is not None,
    "conversation": lambda v, body: v is not None,
    "reasoning": lambda v, body: v is not None,
    "background": lambda v, body: bool(v),
    "store": lambda v, body: bool(v),
    "include": lambda v, body: bool(v),
    "prompt": lambda v, body: v is not None,
    "text": lambda v, body: v not in (None, {}, {"format": {"type": "text"}}),
    "truncation": lambda v, body: v not in (None, "disabled"),
}
PASSED = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
          "min_p", "stream")  # handed to the chat completion as they are


def parse_response(body, enc, n_ctx, template, *, max_tokens, documents=False):
    """A `/v1/responses` body -> the `openai_api.Completion` of its chat. Raises APIError (400) naming the field."""
    if not isinstance(body, dict):
        raise api.APIError(400, "the request body must be a JSON object")
    api.refuse_unsupported(body, REFUSED)
    messages = _messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise api.APIError(400, "instructions must be a string", "instructions")
    if instructions:
        messages = [{"role": "system", "content": instructions}] + messages
    chat = {k: body[k] for k in PASSED if k in body}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = api.number(body, "max_output_tokens", None, 1, max_tokens, integer=True)
    return chat_api.parse_chat(dict(chat, messages=messages), enc, n_ctx, template, max_tokens=max_tokens,
                               documents=documents)


def _messages(given):
    """`input` -> chat messages: a string is one user message; a list holds messages of text parts."""
    if isinstance(given, str) and given:
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise api.APIError(400, "input must be a non-empty string or a list of messages", "input")
    messages = []
    for item in given:
        if not isinstance(item, dict) or item.get("type", "message") != "message" or "role" not in item:
            raise api.APIError(400, f"input holds {item!r:.80}; this server reads messages of text only", "input")
        content = item.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")
                       and isinstance(p.get("text"), str) for p in content):
                raise api.APIError(400, "a message's content parts must be input_text or output_text; this model "
                                        "reads text only", "input")
            content = "".join(p["text"] for p in content)
        messages.append({"role": item["role"], "content": content})
    return messages


def response_id():
    return "resp_" + uuid.uuid4().hex[:24]


def response(rid, model, body, text, reason, prompt_tokens, completion_tokens, status=None):
    """The `response` object of a finished answer (`reason`: the chat's finish_reason)."""
    done = reason == "stop"
    status = status or ("completed" if done else "incomplete")
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": status, "model": model,
        "error": None, "incomplete_details": None if done or status == "in_progress" else
        {"reason": "max_output_tokens" if reason == "length" else reason},
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0), "tools": [],
        "tool_choice": "none", "parallel_tool_calls": False, "text": {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {}, "output": [] if text is None else [_message(rid, text, status)],
        "usage": None if prompt_tokens is None else {
            "input_tokens": prompt_tokens, "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }


def _message(rid, text, status):
    return {"type": "message", "id": "msg_" + rid[5:], "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


async def response_events(run, rid, name, body):
    """The Responses API's stream of `event:`/`data:` pairs, from `response.created` to `response.completed`."""
    number = iter(range(1 << 30))

    def event(kind, **fields):
        return f"event: {kind}\ndata: {json.dumps(dict(type=kind, sequence_number=next(number), **fields))}\n\n"

    item = {"item_id": "msg_" + rid[5:], "output_index": 0, "content_index": 0}
    started = response(rid, name, body, None, None, None, None, status="in_progress")
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    yield event("response.output_item.added", output_index=0, item=_message(rid, "", "in_progress") | {"content": []})
    yield event("response.content_part.added", **item, part={"type": "output_text", "text": "", "annotations": []})
    text, reason, finished = "", None, False
    try:
        async for _, kind, value in run.next_events():
            if kind == "text":
                text += value
                yield event("response.output_text.delta", **item, delta=value)
            elif kind == "done":
                reason = value
        finished = True
    except api.APIError as e:
        finished = True
        yield event("error", code=e.kind, message=e.message, param=e.param)
        return
    finally:
        if not finished:
            run.cancel()
    whole = response(rid, name, body, text, reason, run.prompt_tokens, sum(run.counts))
    yield event("response.output_text.done", **item, text=text)
    yield event("response.content_part.done", **item, part=whole["output"][0]["content"][0])
    yield event("response.output_item.done", output_index=0, item=whole["output"][0])
    yield event("response.completed" if whole["status"] == "completed" else "response.incomplete", response=whole)
