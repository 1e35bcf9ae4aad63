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
