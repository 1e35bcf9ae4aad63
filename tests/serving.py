"""A server for the tests: the app on 127.0.0.1, a free port, Uvicorn in a thread; stopped on exit."""
import contextlib
import socket
import threading


@contextlib.contextmanager
def running_server(sess, **options):
    """Yield the base URL (http://127.0.0.1:<port>) of `build_app(sess, **options)` served in a thread."""
    import uvicorn

    from gpt2_simple.generation.serve import build_app

    app = build_app(sess, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # clients may connect at once: the backlog holds them until Uvicorn accepts
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def tiny_session(root, vocab_dir, seed=7):
    """A session holding a tiny model with the real vocabulary (`runs.make_tiny_model`), its sampler compiled."""
    import gpt2_simple as gpt2
    from runs import make_tiny_model

    model_dir = make_tiny_model(root, vocab_dir, seed=seed)
    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, model_name="tiny", model_dir=model_dir)
    sess.sampler.sample([[1]], 2, seed=0)  # compiled before a server starts
    return sess
