"""Serving models over HTTP: the app built from the routes, and `serve`, which runs it until SIGTERM.

This module owns assembling the ASGI app (the routes of `routes.py` over the `catalog.Catalog` of
the models served, a `routes.Served` state each, the gallery's routes for a run, the workers'
threads started and stopped with the app, the API key and the metrics around it) and running it
under Uvicorn until SIGTERM or Ctrl-C, which drain it (new work gets 503, the requests in flight
finish or end with "abort", then exit 0). What each route answers is `routes.py`'s; which runs
share a model is `catalog.py`'s; each model runs in one `batcher.py` worker thread. Starlette and
Uvicorn are the optional `serve` extra, imported only when a server is built.
"""
import contextlib
import os
import threading
import time

from ..formats import chat_template as templates
from ..formats.run_record import trained_on_documents
from ..model.names import run_folder
from . import gallery
from . import openai_chat as chat_api
from .catalog import Catalog, adapter_run, open_runs
from .http import INSTALL, Auth, stack
from .metrics import Metrics
from .routes import ROUTES, Served, on_error, served_name

API_KEY_ENV = "GPT2_SIMPLE_API_KEY"


def build_app(sess, *, api_key=None, max_tokens=1024, max_queue=64, max_batch=16, max_body=1 << 20,
              model_name=None, chat_template=None, training_data=None, runs=None, checkpoint_dir="checkpoint",
              max_adapters=16, allow_adapter_updates=False):
    """The ASGI app serving the model in `sess`, or the runs named in `runs` (folders under `checkpoint_dir`); see
    `serve` for the other arguments (`chat_template` is the text)."""
    starlette, _ = stack()
    metrics = Metrics(lambda: catalog.batchers, [path for path, _, _ in ROUTES + gallery.ROUTES], INSTALL)

    def served(name, run_sess, batcher, adapter, parent):
        enc = run_sess.encoder
        template = chat_template or templates.read_run_template(run_sess.folder)  # None: the built-in one
        return Served(run_sess, batcher, chat_api.ChatTemplate(template, eos_token=enc.decode([enc.eot_token])),
                      metrics, name, max_tokens, max_body, training_data, documents=trained_on_documents(run_sess.folder),
                      adapter=adapter, parent=parent)

    catalog = Catalog(served, dict(max_queue=max_queue, max_rows=max_batch), max_adapters=max_adapters,
                      list_base=len(runs or ()) > 1)
    if runs:
        open_runs(catalog, runs, checkpoint_dir)
    else:
        catalog.add_session(sess, served_name(sess, model_name))
    first = catalog.default.sess
    table = ROUTES + (gallery.ROUTES if first.folder else ())  # a run's gallery: samples by step, curves, stars
    routes = [starlette.routing.Route(path, handler, methods=list(methods)) for path, handler, methods in table]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for batcher in catalog.batchers:
            batcher.start()
        yield
        for batcher in catalog.batchers:
            batcher.stop()

    app = starlette.applications.Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={Exception: on_error, 404: on_error, 405: on_error})
    app.state.catalog = catalog
    app.state.adapter_updates = allow_adapter_updates
    app.state.galleries = {}  # run folder -> its `gallery.Gallery` (`/gallery?model=NAME`), made when first shown
    return metrics.middleware(Auth(app, api_key) if api_key else app)


def serve(sess=None, run_name="run1", checkpoint_dir="checkpoint", model_name=None, model_dir="models", *,
          host="127.0.0.1", port=8000, api_key=None, max_tokens=1024, max_queue=64, max_batch=16,
          max_body=1 << 20, chat_template=None, training_data=None, shutdown_timeout=30, run_names=None,
          max_adapters=16, allow_adapter_updates=False):
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
        run_names: several runs to serve at once (the command line: `--run_name a --run_name b`), each
            chosen by a request's `model`; LoRA runs over one base share it and are batched together
            (docs/serving.md, "Many fine-tunes"). None: `run_name` alone.
        max_adapters: the most LoRA runs held at once (at start and through
            `/v1/load_lora_adapter`).
        allow_adapter_updates: answer `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`
            (vLLM's), which add and remove LoRA runs while serving.

    Raises:
        ModuleNotFoundError: Starlette, Uvicorn or prometheus-client is missing (the message says
            what to install).
        FileNotFoundError, ValueError: `chat_template` is missing or not a valid template; a run
            cannot be served beside the others (another base or vocabulary, over `max_adapters`).
    """
    _, uvicorn = stack()
    template = templates.source_of(chat_template) if chat_template else None
    runs = list(run_names) if run_names else None
    folder = run_folder(checkpoint_dir, run_name)
    if sess is None and model_name is None and runs is None and os.path.isdir(folder) and adapter_run(folder):
        runs = [run_name]  # a LoRA run is served as its base plus its adapters, never merged
    if runs is None and (sess is None or sess.model is None):
        from ..generation.generate import load_gpt2
        from ..session import start_tf_sess

        sess = load_gpt2(sess or start_tf_sess(), run_name=run_name, checkpoint_dir=checkpoint_dir,
                         model_name=model_name, model_dir=model_dir)
    app = build_app(sess, api_key=api_key or os.environ.get(API_KEY_ENV) or None, max_tokens=max_tokens,
                    max_queue=max_queue, max_batch=max_batch, max_body=max_body, chat_template=template,
                    training_data=training_data, runs=runs, checkpoint_dir=checkpoint_dir,
                    max_adapters=max_adapters, allow_adapter_updates=allow_adapter_updates)
    catalog = app.state.catalog
    server = _Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=10), catalog, shutdown_timeout)
    print(f"Serving {', '.join(s.sess.folder or s.name for s in catalog.entries.values())} on http://{host}:{port}/ "
          f"(OpenAI API at http://{host}:{port}/v1)", flush=True)
    server.run()


def _server_class():
    _, uvicorn = stack()

    class Server(uvicorn.Server):
        """Uvicorn's server, draining on SIGTERM or Ctrl-C, then exiting 0.

        The first signal stops new work (503 with Retry-After; /health says "draining") and lets the
        rows in flight finish for up to `shutdown_timeout` seconds; the rows still drawing then end
        with finish_reason "abort". A second signal aborts at once. Only then does Uvicorn close.
        """

        def __init__(self, config, catalog, shutdown_timeout):
            super().__init__(config)
            self.catalog, self.shutdown_timeout, self.signalled = catalog, shutdown_timeout, False

        def handle_exit(self, sig, frame):
            first, self.signalled = not self.signalled, True
            if first:
                for batcher in self.catalog.batchers:
                    batcher.drain()
            # Not in the signal handler: waiting takes the batcher's lock and time.
            threading.Thread(target=self._close, args=(self.shutdown_timeout if first else 0,), daemon=True).start()

        def _close(self, timeout):
            batchers = self.catalog.batchers
            deadline = time.monotonic() + timeout
            for batcher in batchers:
                batcher.wait_idle(max(0.0, deadline - time.monotonic()))
            for batcher in batchers:
                batcher.abort()
            for batcher in batchers:
                batcher.wait_idle(30)  # the aborted rows send their last events
            # Uvicorn's own exit, once, without its record of the signal (which it would raise again
            # after shutting down: Ctrl-C would then end the process with KeyboardInterrupt, not 0).
            self.should_exit = True

    return Server


def _Server(config, catalog, shutdown_timeout):  # noqa: N802  (a factory: the class needs uvicorn, imported late)
    return _server_class()(config, catalog, shutdown_timeout)
