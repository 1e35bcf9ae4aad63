"""The HTTP server: OpenAI's completions API, a health check and a web page, on Starlette + Uvicorn.

This module owns HTTP: routes (`POST /v1/completions` and `/v1/chat/completions`, `GET /v1/models`,
`POST /tokenize` and `/detokenize`, `GET /tokenizer_info`, `GET /metrics`, `GET /health`, the page
at `/` from the package's `web/` folder), the API key, bounded bodies, JSON errors in OpenAI's
shape (never a traceback), noticing a client that has gone, and a clean exit on SIGTERM (stop
accepting, cancel what runs, exit 0). The request's JSON is checked by `openai_api.py` (chat:
`openai_chat.py`, tokenizer: `tokenizer_api.py`); a request's events and streams are
`answers.py`'s; the model runs in `batcher.py`'s one worker thread, one batch at a time.
Starlette and Uvicorn are the optional `serve` extra, imported only when a server is built.
"""
import asyncio
import hmac
import json
import logging
import os
import signal
import threading
from importlib import resources

from . import openai_api as api
from . import openai_chat as chat_api
from . import tokenizer_api
from .answers import Run, chat_events, completion_events, disconnected
from .batcher import Batcher
from .metrics import Metrics
from .scores import Scorer

INSTALL = 'pip install "gpt2_simple[serve]"  (from a checkout: pip install -e ".[serve]")'
API_KEY_ENV = "GPT2_SIMPLE_API_KEY"
PUBLIC = ("/health", "/", "/gallery")  # no key needed: the health check, and the static pages (they ask for the key)
LOG = logging.getLogger("gpt2_simple.serve")
# The routes /metrics counts by name (any other path counts as "other").
ENDPOINTS = ("/", "/health", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize",
             "/tokenizer_info", "/metrics")


def _stack():
    """(starlette modules, uvicorn), or a one-line error saying how to install them."""
    try:
        import starlette.applications
        import starlette.responses
        import starlette.routing
        import uvicorn
    except ImportError as e:
        raise ModuleNotFoundError(f"gpt2_simple serve needs Starlette and Uvicorn ({e.name} is missing); "
                                  f"install them with: {INSTALL}") from None
    return starlette, uvicorn


def build_app(sess, *, api_key=None, max_tokens=1024, max_queue=64, max_batch=16, max_body=1 << 20,
              model_name=None, chat_template=None, training_data=None):
    """The ASGI app serving the model in `sess` (see `serve` for the arguments; `chat_template` is the text)."""
    starlette, _ = _stack()
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )

    enc, n_ctx = sess.encoder, sess.model.hparams.n_ctx
    name = model_name or os.path.basename(os.path.normpath(sess.folder or "gpt2")) or "gpt2"
    batcher = Batcher(sess.sampler, enc, max_queue=max_queue, max_rows=max_batch, scorer=Scorer(sess.model))
    template = chat_api.ChatTemplate(chat_template, eos_token=enc.decode([enc.eot_token]))
    metrics = Metrics(batcher, ENDPOINTS, INSTALL)
    building = asyncio.Lock()  # one build of the copy index, off the event loop

    async def built(field, build, *args):
        """What `build(*args, training_data)` makes from the run's training text, off the event loop (the
        session keeps it); a 400 naming `field` when that text cannot be found."""
        async with building:
            try:
                return await asyncio.to_thread(build, *args, training_data)
            except (FileNotFoundError, ValueError) as e:
                raise api.APIError(400, f"{field} needs the served run's training text, but {e} (when serving: "
                                        "gpt2_simple serve --training_data FILE)", field) from None

    def error(e):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def health(request):
        return JSONResponse({"status": "ok", "model": name, "queued": batcher.queued, "running": batcher.running,
                             "batches": batcher.batches, "rows": batcher.rows, "tokens": batcher.tokens})

    async def models(request):
        return JSONResponse(api.models(name, n_ctx))

    async def page(request):
        return HTMLResponse(resources.files(__package__).joinpath("web/index.html").read_text(encoding="utf-8"))

    async def completions(request):
        return await answer(request, lambda body: api.parse_completion(body, enc, n_ctx, max_tokens=max_tokens),
                            api.completion_id(), api.completion, completion_events)

    async def chat(request):
        return await answer(request, lambda body: chat_api.parse_chat(body, enc, n_ctx, template,
                                                                      max_tokens=max_tokens),
                            chat_api.chat_id(), chat_api.chat_completion, chat_events)

    async def tokenize(request):
        return await json_route(request, lambda body: tokenizer_api.tokenize(body, enc, n_ctx, template))

    async def detokenize(request):
        return await json_route(request, lambda body: tokenizer_api.detokenize(body, enc))

    async def tokenizer_info(request):
        return JSONResponse(tokenizer_api.tokenizer_info(enc, n_ctx, template))

    async def metrics_page(request):
        body, kind = metrics.scrape()
        return Response(body, media_type=kind)

    async def json_route(request, handle):
        try:
            return JSONResponse(handle(await _read_json(request, max_body)))
        except api.APIError as e:
            return error(e)

    async def answer(request, parse, cid, whole, events):
        """A completion's answer: checked by `parse`, shaped by `whole` (the JSON) or streamed by `events`."""
        try:
            req = parse(await _read_json(request, max_body))
            copies = await built("check_copies", sess.copy_index) if req.check_copies else None
            n = req.options.avoid_copies
            guard = await built("avoid_copies", sess.copy_guard, n) if n else None
            run = Run(batcher, req, asyncio.get_running_loop(), enc, metrics, copies, guard)
        except api.APIError as e:
            return error(e)
        prompt_tokens = sum(len(t) for t in req.prompts)
        metrics.prompt_tokens.inc(prompt_tokens)
        if req.stream:
            return StreamingResponse(events(run, cid, name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collect = asyncio.ensure_future(run.collect())
        gone = asyncio.ensure_future(disconnected(request.receive))
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not collect.done():  # the client left: free its rows now
            collect.cancel()
            run.cancel()
            return Response(status_code=499)
        try:
            choices = collect.result()
        except api.APIError as e:
            return error(e)
        return JSONResponse(run.marked(whole(cid, name, choices, prompt_tokens, sum(run.counts))))

    async def on_error(request, exc):
        status = getattr(exc, "status_code", 500)
        if status >= 500:
            LOG.error("unhandled error on %s: %r", request.url.path, exc)
        message = getattr(exc, "detail", None) if status < 500 else "internal server error"
        return error(api.APIError(status, str(message), kind="server_error" if status >= 500 else
                                  "invalid_request_error"))

    routes = [
        starlette.routing.Route("/", page),
        starlette.routing.Route("/health", health),
        starlette.routing.Route("/v1/models", models),
        starlette.routing.Route("/v1/completions", completions, methods=["POST"]),
        starlette.routing.Route("/v1/chat/completions", chat, methods=["POST"]),
        starlette.routing.Route("/tokenize", tokenize, methods=["POST"]),
        starlette.routing.Route("/detokenize", detokenize, methods=["POST"]),
        starlette.routing.Route("/tokenizer_info", tokenizer_info),
        starlette.routing.Route("/metrics", metrics_page),
    ]
    if sess.folder:  # the run's gallery (gallery.py): samples by step, curves, fresh samples, stars
        from . import gallery
        routes += gallery.routes(sess, lambda request: _read_json(request, max_body))

    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = starlette.applications.Starlette(
        routes=routes, lifespan=_lifespan_of(lifespan),
        exception_handlers={Exception: on_error, 404: on_error, 405: on_error})
    app.state.batcher = batcher
    return metrics.middleware(_Auth(app, api_key) if api_key else app)


def _lifespan_of(generator):
    import contextlib

    return contextlib.asynccontextmanager(generator)


class _Auth:
    """ASGI middleware: `Authorization: Bearer <key>` on every route but PUBLIC, compared in constant time."""

    def __init__(self, app, key):
        self.app, self.key, self.state = app, key.encode(), app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.key):
                from starlette.responses import JSONResponse

                e = api.APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                 kind="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await JSONResponse(e.body(), status_code=401, headers=e.headers)(scope, receive, send)
        return await self.app(scope, receive, send)


async def _read_json(request, limit):
    """The body as JSON, at most `limit` bytes (413 beyond), or a 400 APIError."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise api.APIError(413, f"the request body is {declared} bytes; at most {limit} are allowed")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise api.APIError(413, f"the request body is over {limit} bytes; at most {limit} are allowed")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise api.APIError(400, f"the request body is not valid JSON: {e}") from None


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def serve(sess=None, run_name="run1", checkpoint_dir="checkpoint", model_name=None, model_dir="models", *,
          host="127.0.0.1", port=8000, api_key=None, max_tokens=1024, max_queue=64, max_batch=16,
          max_body=1 << 20, chat_template=None, training_data=None):
    """Serve a model over HTTP until SIGTERM or Ctrl-C: OpenAI's API (docs/serving.md) and a web page at `/`.

    Args:
        sess: a `Session` holding a model; None loads the run (or model) named below.
        run_name: the fine-tuned run to serve, from the folder `checkpoint_dir/run_name`.
        checkpoint_dir: the parent folder of the run folders.
        model_name: if set, serve the pretrained model `model_dir/model_name` instead of a run.
        model_dir: the parent folder of the model folders.
        host: the address to bind; 127.0.0.1 (this machine only) unless you mean otherwise.
        port: the TCP port.
        api_key: require `Authorization: Bearer <api_key>` on every route but /health and the
            page (default: the GPT2_SIMPLE_API_KEY environment variable; none: no key).
        max_tokens: the largest `max_tokens` a request may ask for.
        max_queue: requests that may wait; beyond it the server answers 503 with Retry-After.
        max_batch: rows sampled together at most (requests that can share a batch are batched).
        max_body: the largest request body in bytes (413 beyond).
        chat_template: a file holding a Jinja chat template (as Hugging Face tokenizers use) for
            `/v1/chat/completions`; None: one `role: content` line a message, then `assistant:`.
        training_data: the text the run was trained on, for requests with `check_copies` (default:
            the dataset its training.json names).

    Raises:
        ModuleNotFoundError: Starlette, Uvicorn or prometheus-client is missing (the message says
            what to install).
        FileNotFoundError, ValueError: `chat_template` is missing or not a valid template.
    """
    _, uvicorn = _stack()
    template = _read_template(chat_template) if chat_template else None
    if sess is None or sess.model is None:
        from ..session import start_tf_sess
        from .generate import load_gpt2

        sess = load_gpt2(sess or start_tf_sess(), run_name=run_name, checkpoint_dir=checkpoint_dir,
                         model_name=model_name, model_dir=model_dir)
    sess.sampler.sample([[sess.encoder.eot_token]], 2, seed=0)  # compile before the first request
    app = build_app(sess, api_key=api_key or os.environ.get(API_KEY_ENV) or None, max_tokens=max_tokens,
                    max_queue=max_queue, max_batch=max_batch, max_body=max_body, chat_template=template,
                    training_data=training_data)
    server = _Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=10), app.state.batcher)
    print(f"Serving {sess.folder} on http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)", flush=True)
    server.run_quietly()


def _read_template(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"chat_template={path!r} is not a file; pass a Jinja template file with "
                                f"--chat_template, or leave it out for the built-in template")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chat_api.ChatTemplate(text)  # a bad template fails now, before the model loads
    return text


def _server_class():
    _, uvicorn = _stack()

    class Server(uvicorn.Server):
        """Uvicorn's server; on SIGTERM or Ctrl-C it also cancels the model's work, then exits cleanly."""

        def __init__(self, config, batcher):
            super().__init__(config)
            self.batcher = batcher

        def handle_exit(self, sig, frame):
            threading.Thread(target=self.batcher.stop, daemon=True).start()  # not in the signal handler
            super().handle_exit(sig, frame)

        def run_quietly(self, sockets=None):
            """`run`, then exit 0 after SIGTERM (Uvicorn raises the signal again once it has shut down)."""
            main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
            try:
                self.run(sockets=sockets)
            finally:
                if main:
                    signal.signal(signal.SIGTERM, previous)

    return Server


def _Server(config, batcher):  # noqa: N802  (a factory: the class needs uvicorn, imported late)
    return _server_class()(config, batcher)
