"""A server for the tests: the app on 127.0.0.1, a free port, Uvicorn in a thread; stopped on exit."""
import contextlib
import os
import socket
import threading


@contextlib.contextmanager
def running_server(sess, **options):
    """Yield the base URL (http://127.0.0.1:<port>) of `build_app(sess, **options)` served in a thread."""
    import uvicorn

    from gpt2_simple.serving.serve import build_app

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


def client_fixture(key, **options):
    """A module fixture `client` (`client = client_fixture(KEY, ...)`): conftest's `served_sess` served by
    `build_app(sess, api_key=key, **options)` and an httpx client that sends `key` to it.

    The client's `base_url` is the server's (`url_of(client)`); `client.app` is the app (batcher, scorer, metrics).
    """
    import httpx
    import pytest

    @pytest.fixture(scope="module")
    def client(served_sess):
        with running_server(served_sess, api_key=key, **options) as (url, app):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
                c.app = app
                yield c

    return client


def url_of(client):
    """The server's base URL without the trailing slash httpx keeps: http://127.0.0.1:<port>."""
    return str(client.base_url).rstrip("/")


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def headless_chromium(profile_dir, window="1000,760"):
    """A selenium driver for Debian's headless Chromium (no network of its own; the caller quits it).

    Chromium and its driver come from `apt-get install chromium chromium-driver` (`.ci/run`);
    without them the test fails, it does not skip.
    """
    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: apt-get install -y chromium chromium-driver (see .ci/run)")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager must not reach for the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={window}", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
