"""OpenAI's completions contract: checking a request's JSON, and shaping answers, chunks and errors.

This module owns the wire format of `POST /v1/completions` and nothing about HTTP or the model:
`parse_completion` turns a decoded JSON body into a `Completion` carrying its `SamplingOptions`
(or raises `APIError`, which names the field, as OpenAI's `{"error": {"message", "type", "param"}}`
does), and the other functions build the response objects. A prompt is text or token ids. Unknown fields are ignored,
as OpenAI does, and so are known ones at a value that changes nothing (`frequency_penalty: 0`,
`logprobs: null`); a field the server does not implement is refused by name when its value would
change the answer (`REFUSED`). Scores (`logprobs`, `echo`) are shaped here from `scores.Scores`.
"""
import codecs
import dataclasses
import time
import uuid

from ..generation.call import context_of
from ..generation.copies import SPAN
from ..generation.copy_guard import WINDOW
from ..generation.options import SamplingOptions
from ..generation.ranges import RANGES
from ..generation.scores import MAX_TOP
from ..generation.stop_strings import StopStrings

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 16
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_SEED = 2**42  # through `draws.batch_seed` it stays an int64
MAX_LOGPROBS = MAX_TOP  # OpenAI allows 5; older lm-evaluation-harness versions ask for 10


class APIError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status, message, param=None, kind="invalid_request_error", headers=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Completion:
    """A checked request: its prompts as token ids, and what to do with them."""

    prompts: list  # [[int]]: one token list per prompt
    contexts: list  # [[int]]: what the model reads of each (`call.context_of`: a documents run's start first)
    n: int
    options: SamplingOptions  # how each row draws; its `stop_tokens` are `stops`' token sequences
    max_tokens: int
    stops: StopStrings  # where a text ends: the end of a document last
    seed: int
    stream: bool
    logprobs: int = None  # alternatives per token, or None: no scores
    echo: bool = False  # the prompt comes back before the completion, scored when `logprobs` is set
    include_usage: bool = False  # a stream ends with a chunk of token counts (`stream_options`)
    chat: bool = False  # a chat's request: its scores take the chat shape
    check_copies: bool = False  # each choice gets its `copy` mark from the run's copy index
    copy_threshold: int = None  # choices sharing this many tokens or more with the training data are dropped


def number(body, name, default, low, high, *, integer=False, low_open=False):
    """Field `name`'s number (`default` when absent or null) in [low, high] (`low_open`: (low, high]); else a 400."""
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


def _option(body, name, default, high=None):
    """A sampling option's field, in its range on the wire (`ranges.RANGES`; `high` overrides its top)."""
    low, top, low_open = RANGES[name].on_wire()
    return number(body, name, default, low, top if high is None else high, integer=RANGES[name].integer,
                   low_open=low_open)


def _prompts(body, enc):
    """`prompt` -> token lists: a string, a list of strings, a list of ids, or a list of id lists."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
        raise APIError(400, "prompt must be a non-empty string, a list of strings, a list of token ids "
                            "or a list of such lists", "prompt")
    tokens = []
    for p in prompt:
        if not p:
            raise APIError(400, "prompt must not be empty", "prompt")
        tokens.append(enc.encode(p) if isinstance(p, str) else check_ids(p, enc_size(enc), "prompt"))
    return tokens


def is_ids(value):
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def check_ids(ids, n_vocab, name):
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise APIError(400, f"{name} holds the token id {bad}, out of range; ids must be in [0, {n_vocab - 1}]",
                       name)
    return list(ids)


def _fits(prompts, n_ctx, max_tokens, scored):
    """A prompt must leave room for a token; a scored one, room for all of them (one pass scores the whole text)."""
    for ids in prompts:
        if scored and len(ids) + max_tokens > n_ctx:
            field = "max_tokens" if len(ids) < n_ctx else "prompt"
            raise APIError(400, f"the prompt is {len(ids)} tokens and max_tokens={max_tokens}, but scored text "
                                f"(logprobs) must fit in the model's context of {n_ctx} tokens; shorten the "
                                f"prompt or lower max_tokens", field)
        if len(ids) > n_ctx - min(max_tokens, 1):
            raise APIError(400, f"the prompt is {len(ids)} tokens but the model's context is {n_ctx}; "
                                f"shorten it below {n_ctx} tokens", "prompt")


# Fields the server does not implement, refused only at a value that would change the answer.
REFUSED = {
    "best_of": lambda v, body: v is not None and v != body.get("n", 1) and v != 1,
    "suffix": lambda v, body: bool(v),
}


def refuse_unsupported(body, refused=None):
    """A 400 naming the first field of `refused` (default REFUSED) whose value would change the answer."""
    for name, changes in (refused or REFUSED).items():
        if name in body and changes(body[name], body):
            raise APIError(400, f"{name}={body[name]!r} is not supported by this server; leave it out", name)


def _stops(body, first=()):
    """The request's `StopStrings`: `first` (chat's end of turn), then `stop`'s (OpenAI's limit, 4), then
    the end of a document, which ends a completion too; all of them fit the compiled loop's table."""
    try:
        strings = StopStrings(body.get("stop"), limit=MAX_STOP_STRINGS).strings
    except ValueError as e:
        raise APIError(400, str(e), "stop") from None
    return StopStrings(list(first) + strings + ["<|endoftext|>"])


def parse_completion(body, enc, n_ctx, *, max_tokens, first_stops=(), documents=False):
    """A JSON body (already decoded) -> `Completion`. Raises APIError (400) naming the field.

    `first_stops`: stop strings ahead of the request's own (chat's end of turn; not counted in its limit).
    `documents`: the served run trained on documents, so each prompt is read after end-of-text, as `generate` reads it.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    refuse_unsupported(body)
    prompts = _prompts(body, enc)
    contexts = [context_of(p, enc.eot_token, documents=documents) for p in prompts]
    tokens = number(body, "max_tokens", DEFAULT_MAX_TOKENS, 0, max_tokens, integer=True)
    logprobs = number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    echo = flag(body, "echo")
    _fits(contexts, n_ctx, tokens, logprobs is not None)
    temperature = _option(body, "temperature", 1.0)
    top_p = _option(body, "top_p", 1.0)
    top_k = _option(body, "top_k", 0, high=enc_size(enc))
    penalty = _option(body, "repetition_penalty", 1.0)
    presence = _option(body, "presence_penalty", 0.0)
    frequency = _option(body, "frequency_penalty", 0.0)
    min_p = _option(body, "min_p", 0.0)
    n = number(body, "n", 1, 1, MAX_N, integer=True)
    seed = number(body, "seed", None, 0, MAX_SEED, integer=True)
    stream = flag(body, "stream")
    include_usage = _stream_options(body, stream)
    copy_threshold = number(body, "copy_threshold", None, SPAN, 1 << 20, integer=True)
    if copy_threshold is not None and stream:
        raise APIError(400, "copy_threshold cannot drop a streamed choice (its text is sent before it is "
                            "checked); leave out stream, or send check_copies: true to get each choice's mark",
                       "copy_threshold")
    if temperature == 0:  # OpenAI's greedy decoding
        temperature, top_k, top_p = 1.0, 1, 1.0
    stops = _stops(body, first_stops)
    options = SamplingOptions(temperature=float(temperature), top_k=int(top_k),
                              top_p=0.0 if top_p >= 1.0 else float(top_p), repetition_penalty=float(penalty),
                              presence_penalty=float(presence), frequency_penalty=float(frequency),
                              logit_bias=_logit_bias(body, enc_size(enc)), min_p=float(min_p),
                              stop_tokens=tuple(tuple(t) for t in stops.tokens(enc)),
                              avoid_copies=number(body, "avoid_copies", 0, 0, WINDOW, integer=True))
    return Completion(prompts=prompts, contexts=contexts, n=n, options=options, max_tokens=tokens, stops=stops, seed=seed,
                      stream=stream, logprobs=logprobs, echo=echo, include_usage=include_usage,
                      check_copies=flag(body, "check_copies") or copy_threshold is not None,
                      copy_threshold=copy_threshold)


def _stream_options(body, stream):
    """`stream_options`: whether a stream ends with a usage chunk; a 400 naming a key the server does not implement."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise APIError(400, f"stream_options must be an object such as {{\"include_usage\": true}}, got {options!r}",
                       "stream_options")
    if not stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    for key in options:
        if key != "include_usage":
            raise APIError(400, f"stream_options.{key} is not supported by this server; leave it out",
                           f"stream_options.{key}")
    return flag(options, "include_usage")


def _logit_bias(body, n_vocab):
    """`logit_bias` ({"id": bias}, JSON keys being strings) -> sorted ((id, bias), ...), hashable for batching."""
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise APIError(400, f"logit_bias must be an object mapping token ids to numbers, got {bias!r}", "logit_bias")
    pairs = []
    for key, value in bias.items():
        if not (isinstance(key, str) and key.lstrip("-").isdigit()):
            raise APIError(400, f"logit_bias has the key {key!r}; keys must be token ids", "logit_bias")
        check_ids([int(key)], n_vocab, "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias[{key!r}]={value!r} must be a number in [-100, 100]", "logit_bias")
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs))


def flag(body, name):
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise APIError(400, f"{name} must be true or false, got {value!r}", name)
    return value


def enc_size(enc):
    return len(enc.encoder)


def completion_id():
    return "cmpl-" + uuid.uuid4().hex[:24]


def completion(cid, model, choices, prompt_tokens, completion_tokens):
    """The non-streaming answer. `choices`: [(text, finish_reason, logprobs object or None)] in OpenAI's index order."""
    return {
        "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"text": text, "index": i, "logprobs": scores, "finish_reason": reason}
                    for i, (text, reason, scores) in enumerate(choices)],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def usage(prompt_tokens, completion_tokens):
    """OpenAI's `usage` object: the tokens read and written."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def usage_chunk(cid, model, kind, prompt_tokens, completion_tokens):
    """A stream's last chunk with `stream_options: {"include_usage": true}`: no choices, the counts (`kind`: the object)."""
    return {"id": cid, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid, model, index, text, finish_reason=None, logprobs=None):
    """One Server-Sent Event's object while streaming."""
    return {
        "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def logprobs_object(enc, scores, k, prompt_length, echo):
    """OpenAI's `logprobs` of one choice from the `Scores` of its prompt and completion.

    `tokens`, `token_logprobs` (the text's first token has null: nothing predicts it),
    `top_logprobs` (the k likeliest, and the token itself, as OpenAI returns up to k + 1) and
    `text_offset` (characters from the start of the prompt). Without `echo`, the completion's only.
    """
    names = [enc.decode([t]) for t in scores.tokens]
    offsets, decoder, at = [], codecs.getincrementaldecoder("utf-8")(errors=enc.errors), 0
    for t in scores.tokens:
        offsets.append(at)
        at += len(decoder.decode(enc.decode_bytes([t])))
    top = [None if alternatives is None else _top(enc, alternatives[:k], name, lp)
           for alternatives, name, lp in zip(scores.top, names, scores.logprobs)]
    start = 0 if echo else prompt_length
    return {"tokens": names[start:], "token_logprobs": scores.logprobs[start:], "top_logprobs": top[start:],
            "text_offset": offsets[start:]}


def _top(enc, alternatives, name, logprob):
    top = {enc.decode([t]): lp for t, lp in alternatives}
    top.setdefault(name, logprob)
    return top


def models(held):
    """`GET /v1/models`, in vLLM's shape, from (name, n_ctx, root, parent) a model: `root` is the folder served (a run
    or model), and `parent` the model a served LoRA run sits on (None: the model is served whole)."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "gpt2_simple",
                                        "root": root or name, "parent": parent, "max_model_len": n_ctx}
                                       for name, n_ctx, root, parent in held]}
