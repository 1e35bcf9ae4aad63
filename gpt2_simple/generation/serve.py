"""The HTTP server: OpenAI's completions API, a health check and a web page, on Starlette + Uvicorn.

This module owns HTTP: routes (`POST /v1/completions`, `GET /v1/models`, `GET /health`, the page
at `/` from the package's `web/` folder), the API key, bounded bodies, JSON errors in OpenAI's
shape (never a traceback), Server-Sent Events, noticing a client that has gone, and a clean
exit on SIGTERM (stop accepting, cancel what runs, exit 0). The request's JSON is checked by
`openai_api.py`; the model runs in `batcher.py`'s one worker thread, one batch at a time.
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
from .batcher import Batcher, Job, QueueFull

INSTALL = 'pip install "gpt2_simple[serve]"  (from a checkout: pip install -e ".[serve]")'
API_KEY_ENV = "GPT2_SIMPLE_API_KEY"
PUBLIC = ("/health", "/", "/gallery")  # no key needed: the health check, and the static pages (they ask for the key)
LOG = logging.getLogger("gpt2_simple.serve")


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
              model_name=None):
    """The ASGI app serving the model in `sess` (see `serve` for the arguments)."""
    starlette, _ = _stack()
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )

    enc, n_ctx = sess.encoder, sess.model.hparams.n_ctx
    name = model_name or os.path.basename(os.path.normpath(sess.folder or "gpt2")) or "gpt2"
    batcher = Batcher(sess.sampler, enc, max_queue=max_queue, max_rows=max_batch)

    def error(e):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def health(request):
        return JSONResponse({"status": "ok", "model": name, "queued": batcher.queued, "running": batcher.running,
                             "batches": batcher.batches, "rows": batcher.rows, "tokens": batcher.tokens})

    async def models(request):
        return JSONResponse(api.models(name))

    async def page(request):
        return HTMLResponse(resources.files(__package__).joinpath("web/index.html").read_text(encoding="utf-8"))

    async def completions(request):
        try:
            req = api.parse_completion(await _read_json(request, max_body), enc, n_ctx, max_tokens=max_tokens)
            run = _Run(batcher, req, asyncio.get_running_loop())
        except api.APIError as e:
            return error(e)
        cid = api.completion_id()
        prompt_tokens = sum(len(t) for t in req.prompts)
        if req.stream:
            return StreamingResponse(_events(run, cid, name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collect = asyncio.ensure_future(run.collect())
        gone = asyncio.ensure_future(_disconnected(request.receive))
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
        return JSONResponse(api.completion(cid, name, choices, prompt_tokens, sum(run.counts)))

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
    return _Auth(app, api_key) if api_key else app


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


async def _disconnected(receive):
    while (await receive())["type"] != "http.disconnect":
        pass


class _Run:
    """One request's jobs in the batcher, and the events they send back to the event loop."""

    def __init__(self, batcher, req, loop):
        self.batcher, self.n, self.events = batcher, req.n, asyncio.Queue()
        self.rows = len(req.prompts) * req.n
        self.counts = [0] * self.rows
        self.jobs = [Job(tokens=t, n=req.n, options=req.options, seed=req.seed, emit=self._emitter(loop, p))
                     for p, t in enumerate(req.prompts)]
        try:
            for job in self.jobs:
                batcher.submit(job)
        except (QueueFull, RuntimeError) as e:
            self.cancel()
            raise api.APIError(503, f"the server is busy ({e}); retry shortly", kind="server_busy",
                               headers={"Retry-After": "1"}) from None

    def _emitter(self, loop, prompt):
        def emit(event):
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, (prompt, event))
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass

        return emit

    def cancel(self):
        for job in self.jobs:
            self.batcher.cancel(job)

    async def next_events(self):
        """Yield (choice index, kind, value, ...) until every row is done; raises APIError on a failure."""
        left = self.rows
        while left:
            prompt, event = await self.events.get()
            if event[0] == "error":
                self.cancel()
                busy = "shutting down" in event[1]
                raise api.APIError(503 if busy else 500, event[1], kind="server_error")
            index = prompt * self.n + event[1]
            if event[0] == "done":
                left -= 1
                self.counts[index] = event[3]
            yield index, event[0], event[2]

    async def collect(self):
        texts, reasons = [""] * self.rows, [None] * self.rows
        async for index, kind, value in self.next_events():
            if kind == "text":
                texts[index] += value
            else:
                reasons[index] = value
        return list(zip(texts, reasons))


async def _events(run, cid, name):
    """The Server-Sent Events of a streaming completion, ending with `data: [DONE]`."""
    finished = False
    try:
        try:
            async for index, kind, value in run.next_events():
                text, reason = (value, None) if kind == "text" else ("", value)
                yield f"data: {json.dumps(api.chunk(cid, name, index, text, reason))}\n\n"
        except api.APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        finished = True
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away (the stream was cancelled): free its rows at once
            run.cancel()


def serve(sess=None, run_name="run1", checkpoint_dir="checkpoint", model_name=None, model_dir="models", *,
          host="127.0.0.1", port=8000, api_key=None, max_tokens=1024, max_queue=64, max_batch=16,
          max_body=1 << 20):
    """Serve a model over HTTP until SIGTERM or Ctrl-C: OpenAI's `/v1/completions` and a web page at `/`.

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

    Raises:
        ModuleNotFoundError: Starlette or Uvicorn is missing (the message says what to install).
    """
    _, uvicorn = _stack()
    if sess is None or sess.model is None:
        from ..session import start_tf_sess
        from .generate import load_gpt2

        sess = load_gpt2(sess or start_tf_sess(), run_name=run_name, checkpoint_dir=checkpoint_dir,
                         model_name=model_name, model_dir=model_dir)
    sess.sampler.sample([[sess.encoder.eot_token]], 2, seed=0)  # compile before the first request
    app = build_app(sess, api_key=api_key or os.environ.get(API_KEY_ENV) or None, max_tokens=max_tokens,
                    max_queue=max_queue, max_batch=max_batch, max_body=max_body)
    server = _Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=10), app.state.batcher)
    print(f"Serving {sess.folder} on http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)", flush=True)
    server.run_quietly()


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
