"""OpenAI's chat contract: messages rendered into a prompt by a template, and chat-shaped answers.

This module owns `POST /v1/chat/completions`' wire format: checking `messages`, rendering them
into one prompt with the run's chat template (`formats/chat_template.py`; read with special
tokens, so an assistant turn's `<|endoftext|>` is the one id it was trained as),
finding the text that begins the next turn (generation stops there), and the `chat.completion`
objects and chunks. The sampling options are the completions endpoint's (`openai_api`), so chat
takes the same `n`, `stop`, `seed`, `temperature`, `top_p`, `top_k` and penalties.
"""
import dataclasses
import time
import uuid

from ..formats import chat_template
from ..generation.call import context_of
from . import openai_api as api

ROLES = ("system", "user", "assistant", "developer", "tool")
# Chat fields the server does not implement, refused only at a value that would change the answer.
REFUSED = {
    "tools": lambda v, body: bool(v),
    "functions": lambda v, body: bool(v),
    "tool_choice": lambda v, body: v not in (None, "none"),
    "function_call": lambda v, body: v not in (None, "none"),
    "response_format": lambda v, body: v is not None and v != {"type": "text"},
}


class ChatTemplate(chat_template.ChatTemplate):
    """The run's chat template as the endpoint uses it: a refused conversation is a 400."""

    def render(self, messages, add_generation_prompt=True):
        try:
            return super().render(messages, add_generation_prompt)
        except chat_template.TemplateError as e:
            raise api.APIError(400, str(e), "messages") from None


def messages_of(body):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise api.APIError(400, "messages must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise api.APIError(400, f"each message needs a role among {', '.join(ROLES)}; got {m!r:.80}", "messages")
        out.append({"role": m["role"], "content": _content(m.get("content"))})
    return out


def _content(content):
    """A message's text: a string, or a list of {"type": "text", "text"} parts (joined)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise api.APIError(400, "a message's content must be a string or a list of text parts; this model reads text "
                            "only", "messages")


def parse_chat(body, enc, n_ctx, template, *, max_tokens, documents=False):
    """A JSON body -> `openai_api.Completion` of the rendered prompt, stopping at the next turn too."""
    if not isinstance(body, dict):
        raise api.APIError(400, "the request body must be a JSON object")
    api.refuse_unsupported(body, REFUSED)
    api.refuse_unsupported(body, {"best_of": api.REFUSED["best_of"]})
    prompt = enc.encode(template.render(messages_of(body)), allow_special=True)
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:  # OpenAI's default: as long as the context allows (a documents run reads end-of-text first)
        tokens = max(1, min(max_tokens, n_ctx - len(context_of(prompt, enc.eot_token, documents=documents))))
    fields = {k: v for k, v in body.items() if k not in ("messages", "logprobs", "top_logprobs", "echo", "suffix",
                                                         "best_of")}
    req = api.parse_completion(dict(fields, prompt=prompt, max_tokens=tokens, logprobs=_alternatives(body)), enc, n_ctx,
                               max_tokens=max_tokens, first_stops=(template.turn_end,) if template.turn_end else (),
                               documents=documents)
    if req.max_tokens == 0:
        raise api.APIError(400, "max_tokens must be at least 1 for a chat completion", "max_tokens")
    return dataclasses.replace(req, chat=True)


def _alternatives(body):
    """Chat's `logprobs` (true/false) and `top_logprobs` -> completions' `logprobs`: alternatives a token, or None."""
    top = api.number(body, "top_logprobs", None, 0, api.MAX_LOGPROBS, integer=True)
    if not api.flag(body, "logprobs"):
        if top:
            raise api.APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return None
    return top or 0


def chat_logprobs(enc, scores, k, prompt_length):
    """OpenAI's chat `logprobs` of one choice: `{"content": [...]}`, one entry a reply token, each with
    its `token`, `logprob`, UTF-8 `bytes` and its `k` likeliest alternatives (`top_logprobs`)."""
    def entry(token, logprob):
        return {"token": enc.decode([token]), "logprob": logprob, "bytes": list(enc.decode_bytes([token]))}

    return {"content": [dict(entry(t, lp), top_logprobs=[entry(a, alp) for a, alp in (alts or [])[:k]])
                        for t, lp, alts in zip(scores.tokens[prompt_length:], scores.logprobs[prompt_length:],
                                               scores.top[prompt_length:])]}


def chat_id():
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def chat_completion(cid, model, choices, prompt_tokens, completion_tokens):
    """The non-streaming answer. `choices`: [(text, finish_reason, logprobs or None)] in index order."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": scores,
                     "finish_reason": reason} for i, (text, reason, scores) in enumerate(choices)],
        "usage": api.usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(cid, model, index, delta, finish_reason=None, logprobs=None):
    """One Server-Sent Event's object while streaming a chat completion (a choice's `logprobs` come with its end)."""
    return {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
