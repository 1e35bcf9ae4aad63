"""OpenAI's chat contract: messages rendered into a prompt by a template, and chat-shaped answers.

This module owns `POST /v1/chat/completions`' wire format: checking `messages`, rendering them
into one prompt (`ChatTemplate`: by default one `role: content` line a message, then
`assistant:`; or a Jinja template from a file, as Hugging Face tokenizers and llama.cpp use),
finding the text that begins the next turn (generation stops there), and the `chat.completion`
objects and chunks. The sampling options are the completions endpoint's (`openai_api`), so chat
takes the same `n`, `stop`, `seed`, `temperature`, `top_p`, `top_k` and penalties.
"""
import dataclasses
import time
import uuid

from ..generation.call import context_of
from . import openai_api as api
from .http import INSTALL

ROLES = ("system", "user", "assistant", "developer", "tool")
# Chat fields the server does not implement, refused only at a value that would change the answer.
REFUSED = {
    "tools": lambda v, body: bool(v),
    "functions": lambda v, body: bool(v),
    "tool_choice": lambda v, body: v not in (None, "none"),
    "function_call": lambda v, body: v not in (None, "none"),
    "response_format": lambda v, body: v is not None and v != {"type": "text"},
}
_MARKS = ("\x00reply\x00", "\x00next\x00")  # stand-ins for a reply and the turn after it


class ChatTemplate:
    """Messages -> prompt text, and the text that begins the next turn.

    `source` None is the default: `role: content` a line, ending with `assistant:`. Otherwise a
    Jinja template seeing `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.
    """

    def __init__(self, source=None, *, eos_token="<|endoftext|>"):
        self.source, self.eos_token = source, eos_token
        self._jinja = _compile(source) if source is not None else None
        self.turn_end = self._turn_end()

    def render(self, messages, add_generation_prompt=True):
        if self._jinja is None:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines + (["assistant:"] if add_generation_prompt else []))
        import jinja2

        try:
            return self._jinja.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                      bos_token=self.eos_token, eos_token=self.eos_token)
        except (jinja2.TemplateError, ValueError, TypeError) as e:  # raise_exception(), or a template bug
            raise api.APIError(400, f"the chat template cannot render these messages: {e}", "messages") from None

    def _turn_end(self):
        """What the template writes between an assistant's reply and the next user message, up to its first line.

        The default gives "\\nuser:"; ChatML gives "<|im_end|>". Empty: the template marks no turn.
        """
        try:
            text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKS[0]},
                                {"role": "user", "content": _MARKS[1]}], add_generation_prompt=False)
        except api.APIError as e:
            raise ValueError(f"chat_template fails on a plain user/assistant/user chat: {e.message}") from None
        start, end = text.find(_MARKS[0]), text.find(_MARKS[1])
        between = text[start + len(_MARKS[0]):end].rstrip() if 0 <= start < end else ""
        body = between.lstrip("\n")
        if "\n" in body:  # "<|im_end|>\n<|im_start|>user": the turn has ended at its first line
            between = between[:len(between) - len(body) + body.index("\n")]
        return between


def _compile(source):
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ModuleNotFoundError(f"a chat template needs Jinja2; install it with: {INSTALL}") from None
    import jinja2

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise  # Hugging Face's templates call it on messages they refuse
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ValueError(f"chat_template is not a valid Jinja template: {e}") from None


def _raise(message):
    raise ValueError(message)


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
    prompt = enc.encode(template.render(messages_of(body)))
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
