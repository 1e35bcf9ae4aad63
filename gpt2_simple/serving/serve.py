"""Serving a model over HTTP: the app built from the routes, and `serve`, which runs it until SIGTERM.

This module owns assembling the ASGI app (the routes of `routes.py` over one `routes.Served`
state, the gallery's routes for a run, the batcher's thread started and stopped with the app,
the API key and the metrics around it) and running it under Uvicorn until SIGTERM or Ctrl-C, which
drain it (new work gets 503, the requests in flight finish or end with "abort", then exit 0). What each route answers is `routes.py`'s; the model
runs in `batcher.py`'s one worker thread. Starlette and Uvicorn are the optional `serve` extra,
imported only when a server is built.
"""
import contextlib
import os
import threading

from ..formats import chat_template as templates
from ..formats.run_record import trained_on_documents
from ..generation.scores import LogprobScorer
from . import gallery
from . import openai_chat as chat_api
from .batcher import Batcher
from .http import INSTALL, Auth, stack
from .metrics import Metrics
from .routes import ROUTES, Served, on_error, served_name

API_KEY_ENV = "GPT2_SIMPLE_API_KEY"


def build_app(sess, *, api_key=None, max_tokens=1024, max_queue=64, max_batch=16, max_body=1 << 20,
              model_name=None, chat_template=None, training_data=None):
    """The ASGI app serving the model in `sess` (see `serve` for the arguments; `chat_template` is the text)."""
    starlette, _ = stack()
    enc = sess.encoder
    batcher = Batcher(sess.sampler, enc, max_queue=max_queue, max_rows=max_batch, scorer=LogprobScorer(sess.model))
    table = ROUTES + (gallery.ROUTES if sess.folder else ())  # a run's gallery: samples by step, curves, stars
    template = chat_template or templates.read_run_template(sess.folder)  # None: the built-in one
    served = Served(sess, batcher, chat_api.ChatTemplate(template, eos_token=enc.decode([enc.eot_token])),
                    Metrics(batcher, [path for path, _, _ in table], INSTALL), served_name(sess, model_name),
                    max_tokens, max_body, training_data, documents=trained_on_documents(sess.folder))
    routes = [starlette.routing.Route(path, handler, methods=list(methods)) for path, handler, methods in table]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = starlette.applications.Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={Exception: on_error, 404: on_error, 405: on_error})
    app.state.batcher, app.state.served = batcher, served
    app.state.gallery = gallery.Gallery(sess.folder) if sess.folder else None
    return served.metrics.middleware(Auth(app, api_key) if api_key else app)


def serve(sess=None, run_name="run1", checkpoint_dir="checkpoint", model_name=None, model_dir="models", *,
          host="127.0.0.1", port=8000, api_key=None, max_tokens=1024, max_queue=64, max_batch=16,
          max_body=1 << 20, chat_template=None, training_data=None, shutdown_timeout=30):
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
        chat_template: the chat template of `/v1/chat/completions`: 'gpt2', 'dialogpt' or a Jinja
            template file (as Hugging Face tokenizers use); None: the one the run trained with (its
            chat_template.jinja), else 'gpt2' (docs/chat.md).
        training_data: the text the run was trained on, for requests with `check_copies` (default:
            the dataset its training.json names).
        shutdown_timeout: on SIGTERM or Ctrl-C, seconds the requests in flight may take to finish
            (new ones get 503); those still running then end with finish_reason "abort". A second
            signal stops at once.

    Raises:
        ModuleNotFoundError: Starlette, Uvicorn or prometheus-client is missing (the message says
            what to install).
        FileNotFoundError, ValueError: `chat_template` is missing or not a valid template.
    """
    _, uvicorn = stack()
    template = templates.source_of(chat_template) if chat_template else None
    if sess is None or sess.model is None:
        from ..generation.generate import load_gpt2
        from ..session import start_tf_sess

        sess = load_gpt2(sess or start_tf_sess(), run_name=run_name, checkpoint_dir=checkpoint_dir,
                         model_name=model_name, model_dir=model_dir)
    sess.sampler.sample([[sess.encoder.eot_token]], 2, seed=0)  # compile before the first request
    app = build_app(sess, api_key=api_key or os.environ.get(API_KEY_ENV) or None, max_tokens=max_tokens,
                    max_queue=max_queue, max_batch=max_batch, max_body=max_body, chat_template=template,
                    training_data=training_data)
    server = _Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=10), app.state.batcher,
                     shutdown_timeout)
    print(f"Serving {sess.folder} on http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)", flush=True)
    server.run()


def _server_class():
    _, uvicorn = stack()

    class Server(uvicorn.Server):
        """Uvicorn's server, draining on SIGTERM or Ctrl-C, then exiting 0.

        The first signal stops new work (503 with Retry-After; /health says "draining") and lets the
        rows in flight finish for up to `shutdown_timeout` seconds; the rows still drawing then end
        with finish_reason "abort". A second signal aborts at once. Only then does Uvicorn close.
        """

        def __init__(self, config, batcher, shutdown_timeout):
            super().__init__(config)
            self.batcher, self.shutdown_timeout, self.signalled = batcher, shutdown_timeout, False

        def handle_exit(self, sig, frame):
            first, self.signalled = not self.signalled, True
            if first:
                self.batcher.drain()
            # Not in the signal handler: waiting takes the batcher's lock and time.
            threading.Thread(target=self._close, args=(self.shutdown_timeout if first else 0,), daemon=True).start()

        def _close(self, timeout):
            if timeout:
                self.batcher.wait_idle(timeout)
            self.batcher.abort()
            self.batcher.wait_idle(30)  # the aborted rows send their last events
            # Uvicorn's own exit, once, without its record of the signal (which it would raise again
            # after shutting down: Ctrl-C would then end the process with KeyboardInterrupt, not 0).
            self.should_exit = True

    return Server


def _Server(config, batcher, shutdown_timeout):  # noqa: N802  (a factory: the class needs uvicorn, imported late)
    return _server_class()(config, batcher, shutdown_timeout)
