"""OpenAI's completions contract: checking a request's JSON, and shaping answers, chunks and errors.

This module owns the wire format of `POST /v1/completions` and nothing about HTTP or the model:
`parse_completion` turns a decoded JSON body into `Job` options (or raises `APIError`, which
names the field, as OpenAI's `{"error": {"message", "type", "param"}}` does), and the other
functions build the response objects. Unknown fields are ignored, as OpenAI does.
"""
import dataclasses
import time
import uuid

from .batcher import Options

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 16
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_SEED = 2**42  # times generate's 1_000_003 it stays an int64


class APIError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status, message, param=None, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclasses.dataclass
class Completion:
    """A checked request: its prompts as token ids, and what to do with them."""

    prompts: list  # [[int]]: one token list per prompt
    n: int
    options: Options
    seed: int
    stream: bool


def _number(body, name, default, low, high, *, integer=False, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise APIError(400, f"{name} must be {what}, got {value!r}", name)
    if (value <= low if low_open else value < low) or value > high:
        left = "(" if low_open else "["
        raise APIError(400, f"{name}={value!r} is out of range; it must be in {left}{low}, {high}]", name)
    return value


def _prompts(body, enc, n_ctx):
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "prompt must be a non-empty string or a non-empty list of strings", "prompt")
    tokens = []
    for p in prompts:
        if not p:
            raise APIError(400, "prompt must not be empty", "prompt")
        ids = enc.encode(p)
        if len(ids) >= n_ctx:
            raise APIError(400, f"the prompt is {len(ids)} tokens but the model's context is {n_ctx}; "
                                f"shorten it below {n_ctx} tokens", "prompt")
        tokens.append(ids)
    return tokens


def _stop(body):
    stop = body.get("stop")
    strings = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(strings, list) or not all(isinstance(s, str) and s for s in strings):
        raise APIError(400, "stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(strings) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop has {len(strings)} strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
    return tuple(strings) + ("<|endoftext|>",)  # the end of a document ends a completion too


def parse_completion(body, enc, n_ctx, *, max_tokens):
    """A JSON body (already decoded) -> `Completion`. Raises APIError (400) naming the field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    prompts = _prompts(body, enc, n_ctx)
    tokens = _number(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, max_tokens, integer=True)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = _number(body, "top_k", 0, 0, enc_size(enc), integer=True)
    penalty = _number(body, "repetition_penalty", 1.0, 0.0, 100.0, low_open=True)
    n = _number(body, "n", 1, 1, MAX_N, integer=True)
    seed = _number(body, "seed", None, 0, MAX_SEED, integer=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, f"stream must be true or false, got {stream!r}", "stream")
    if temperature == 0:  # OpenAI's greedy decoding
        temperature, top_k, top_p = 1.0, 1, 1.0
    options = Options(max_tokens=tokens, temperature=float(temperature), top_k=int(top_k),
                      top_p=0.0 if top_p >= 1.0 else float(top_p), repetition_penalty=float(penalty),
                      stop=_stop(body))
    return Completion(prompts=prompts, n=n, options=options, seed=seed, stream=stream)


def enc_size(enc):
    return len(enc.encoder)


def completion_id():
    return "cmpl-" + uuid.uuid4().hex[:24]


def completion(cid, model, choices, prompt_tokens, completion_tokens):
    """The non-streaming answer. `choices`: [(text, finish_reason)] in OpenAI's index order."""
    return {
        "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(choices)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def chunk(cid, model, index, text, finish_reason=None):
    """One Server-Sent Event's object while streaming."""
    return {
        "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}],
    }


def models(model):
    """`GET /v1/models`."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "gpt2_simple"}]}
