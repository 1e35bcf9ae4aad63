"""The server's routes: one handler a path, each over the `Served` state of the model a request names, and the table.

This module owns what each path answers: `POST /v1/completions`, `/v1/chat/completions` and
`/v1/responses` (checked by `openai_api.py`, `openai_chat.py` and `openai_responses.py`, run as
`answers.Run`s in the batcher, answered whole or streamed), `GET /v1/models`, `POST /tokenize`
and `/detokenize`, `GET /tokenizer_info` (`tokenizer_api.py`), vLLM's `POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (`catalog.py` does the work), `GET /metrics`, `GET /health` and the page at `/`. `ROUTES` is the one list
of them: the app is built from it and `/metrics` counts its paths by name. Building the app and
running it is `serve.py`'s; the gallery's routes are `gallery.py`'s.
"""
import asyncio
import dataclasses
import os
from importlib import resources

from ..model.adapter_rows import BASE
from . import openai_api as api
from . import openai_chat as chat_api
from . import openai_responses, tokenizer_api
from .answers import Run, chat_events, completion_events, disconnected
from .http import error_response, read_json


@dataclasses.dataclass(eq=False)
class Served:
    """What the handlers share: the session, its batcher, template and metrics, and the server's limits."""

    sess: object
    batcher: object  # `batcher.Batcher`
    template: object  # `openai_chat.ChatTemplate`
    metrics: object  # `metrics.Metrics`
    name: str  # the model's id in answers and /v1/models
    max_tokens: int
    max_body: int
    training_data: str = None
    documents: bool = False  # a documents run: prompts are read after end-of-text, as `generate` reads them
    adapter: tuple = BASE  # a LoRA run's (slot, scale) in its base's adapter table
    parent: str = None  # a LoRA run: the name of the base it sits on (vLLM's `parent`)
    building: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # one copy-index build at a time

    @property
    def enc(self):
        return self.sess.encoder

    @property
    def n_ctx(self):
        return self.sess.model.hparams.n_ctx

    async def built(self, field, build, *args):
        """What `build(*args, training_data)` makes from the run's training text, off the event loop (the
        session keeps it); a 400 naming `field` when that text cannot be found."""
        async with self.building:
            try:
                return await asyncio.to_thread(build, *args, self.training_data)
            except (FileNotFoundError, ValueError) as e:
                raise api.APIError(400, f"{field} needs the served run's training text, but {e} (when serving: "
                                        "gpt2_simple serve --training_data FILE)", field) from None


def served_name(sess, name=None):
    """The id the server answers as: `name`, else the folder's name, else "gpt2"."""
    return name or os.path.basename(os.path.normpath(sess.folder or "gpt2")) or "gpt2"


def catalog_of(request):
    return request.app.state.catalog


def served_of(request, body=None):
    """The `Served` a request is for: the model its body names (`catalog.Catalog.pick`), or the first model."""
    return catalog_of(request).pick(body or {})


def served_by_query(request):
    """The `Served` a GET (or the gallery's) request is for: `?model=NAME`, or the first model."""
    return served_of(request, {"model": request.query_params.get("model")})


async def health(request):
    from starlette.responses import JSONResponse

    catalog = catalog_of(request)
    batchers, draining = catalog.batchers, any(b.draining for b in catalog.batchers)
    counts = {key: sum(getattr(b, key) for b in batchers) for key in ("queued", "running", "batches", "rows", "tokens")}
    return JSONResponse(dict({"status": "draining" if draining else "ok", "model": catalog.default.name,
                              "models": list(catalog.entries)}, **counts),
                        status_code=503 if draining else 200)  # a load balancer takes a draining replica out


async def models(request):
    from starlette.responses import JSONResponse

    return JSONResponse(api.models([(s.name, s.n_ctx, s.sess.folder, s.parent)
                                    for s in catalog_of(request).entries.values()]))


async def page(request):
    from starlette.responses import HTMLResponse

    return HTMLResponse(resources.files(__package__).joinpath("web/index.html").read_text(encoding="utf-8"))


async def completions(request):
    return await _answer(request, lambda s, body: api.parse_completion(body, s.enc, s.n_ctx, max_tokens=s.max_tokens,
                                                                       documents=s.documents),
                         api.completion_id(), api.completion, completion_events)


async def chat(request):
    return await _answer(request, lambda s, body: chat_api.parse_chat(body, s.enc, s.n_ctx, s.template,
                                                                      max_tokens=s.max_tokens, documents=s.documents),
                         chat_api.chat_id(), chat_api.chat_completion, chat_events)


async def responses(request):
    """`POST /v1/responses`: a chat (`openai_responses.py`), answered as a `response` object or its events."""
    given = {}

    def parse(s, body):
        given["body"] = body
        return openai_responses.parse_response(body, s.enc, s.n_ctx, s.template, max_tokens=s.max_tokens,
                                               documents=s.documents)

    def whole(rid, name, choices, prompt_tokens, completion_tokens):
        (text, reason, _), = choices
        return openai_responses.response(rid, name, given["body"], text, reason, prompt_tokens, completion_tokens)

    return await _answer(request, parse, openai_responses.response_id(), whole,
                         lambda run, rid, name: openai_responses.response_events(run, rid, name, given["body"]))


async def tokenize(request):
    return await _json_route(request, lambda s, body: tokenizer_api.tokenize(body, s.enc, s.n_ctx, s.template))


async def detokenize(request):
    return await _json_route(request, lambda s, body: tokenizer_api.detokenize(body, s.enc))


async def tokenizer_info(request):
    from starlette.responses import JSONResponse

    try:
        s = served_by_query(request)
        return JSONResponse(tokenizer_api.tokenizer_info(s.enc, s.n_ctx, s.template))
    except api.APIError as e:
        return error_response(e)


async def load_lora_adapter(request):
    """vLLM's `POST /v1/load_lora_adapter` {"lora_name", "lora_path"}: serve one more LoRA run of the shared base."""
    return await _adapter_update(request, lambda catalog, body: catalog.load(body.get("lora_name"),
                                                                             body.get("lora_path")), "added")


async def unload_lora_adapter(request):
    """vLLM's `POST /v1/unload_lora_adapter` {"lora_name"}: stop serving a LoRA run once its rows have ended."""
    return await _adapter_update(request, lambda catalog, body: catalog.unload(body.get("lora_name")), "removed")


async def _adapter_update(request, change, done):
    """Run `change(catalog, body)` off the event loop, with --allow_adapter_updates only; vLLM's plain-text answer."""
    from starlette.responses import PlainTextResponse

    catalog = catalog_of(request)
    try:
        if not request.app.state.adapter_updates:
            raise api.APIError(404, f"{request.url.path} is off; start the server with --allow_adapter_updates")
        body = await read_json(request, catalog.default.max_body)
        await asyncio.to_thread(change, catalog, body)
    except api.APIError as e:
        return error_response(e)
    return PlainTextResponse(f"Success: LoRA adapter '{body.get('lora_name')}' {done} successfully.")


async def metrics_page(request):
    from starlette.responses import Response

    body, kind = catalog_of(request).default.metrics.scrape()
    return Response(body, media_type=kind)


async def _json_route(request, handle):
    from starlette.responses import JSONResponse

    try:
        body = await read_json(request, catalog_of(request).default.max_body)
        return JSONResponse(handle(served_of(request, body), body))
    except api.APIError as e:
        return error_response(e)


async def _answer(request, parse, cid, whole, events):
    """A completion's answer: checked by `parse`, shaped by `whole` (the JSON) or streamed by `events`."""
    from starlette.responses import JSONResponse, Response, StreamingResponse

    catalog = catalog_of(request)
    try:
        body = await read_json(request, catalog.default.max_body)
        s, adapter = catalog.lora_alias(body, served_of(request, body))
        req = parse(s, body)
        copies = await s.built("check_copies", s.sess.copy_index) if req.check_copies else None
        n = req.options.avoid_copies
        guard = await s.built("avoid_copies", s.sess.copy_guard, n) if n else None
        run = Run(s.batcher, req, asyncio.get_running_loop(), s.enc, s.metrics, copies, guard, adapter=adapter,
                  model=s.name)
    except api.APIError as e:
        return error_response(e)
    if req.stream:
        return StreamingResponse(events(run, cid, s.name), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        choices = await collected(request, run)
    except api.APIError as e:
        return error_response(e)
    if choices is None:
        return Response(status_code=499)
    return JSONResponse(run.marked(whole(cid, s.name, choices, run.prompt_tokens, sum(run.counts))))


async def collected(request, run):
    """The whole answer of `run` (`Run.collect`), or None when the client left first (its rows are freed at once)."""
    collect = asyncio.ensure_future(run.collect())
    gone = asyncio.ensure_future(disconnected(request.receive))
    await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not collect.done():
        collect.cancel()
        run.cancel()
        return None
    return collect.result()


async def on_error(request, exc):
    """Any error a handler did not answer, in OpenAI's shape; a 5xx is logged and never shows a traceback."""
    import logging

    status = getattr(exc, "status_code", 500)
    if status >= 500:
        logging.getLogger("gpt2_simple.serve").error("unhandled error on %s: %r", request.url.path, exc)
    message = getattr(exc, "detail", None) if status < 500 else "internal server error"
    return error_response(api.APIError(status, str(message), kind="server_error" if status >= 500 else
                                       "invalid_request_error"))


# (path, handler, methods): the app's routes (a run's gallery adds `gallery.ROUTES`); /metrics counts their paths.
ROUTES = (
    ("/", page, ("GET",)),
    ("/health", health, ("GET",)),
    ("/v1/models", models, ("GET",)),
    ("/v1/completions", completions, ("POST",)),
    ("/v1/chat/completions", chat, ("POST",)),
    ("/v1/responses", responses, ("POST",)),
    ("/tokenize", tokenize, ("POST",)),
    ("/detokenize", detokenize, ("POST",)),
    ("/tokenizer_info", tokenizer_info, ("GET",)),
    ("/v1/load_lora_adapter", load_lora_adapter, ("POST",)),
    ("/v1/unload_lora_adapter", unload_lora_adapter, ("POST",)),
    ("/metrics", metrics_page, ("GET",)),
)
