"""The web page in a real browser: headless Chromium types a prompt, sees text stream in, stops it.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`, in
`.ci/run`); without them this test fails, it does not skip. The screenshot is saved under
$TEST_ARTIFACTS (default: test-artifacts/) as serve_page.png.
"""
import os

import httpx
import pytest
from runs import make_tiny_model
from serving import headless_chromium, running_server

import gpt2_simple as gpt2

pytestmark = pytest.mark.slow  # all of this file: `pytest -m "not slow"` skips it

RECORD = """
const target = document.getElementById("output");
window.lengths = [];
new MutationObserver(() => {
  const c = document.getElementById("completion");
  if (c) window.lengths.push(c.textContent.length);
}).observe(target, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, real_vocab_dir):
    model_dir = make_tiny_model(tmp_path_factory.mktemp("browser"), real_vocab_dir, seed=1)
    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, model_name="tiny", model_dir=model_dir)
    with running_server(sess, max_tokens=100000) as (url, app):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"), window="1000,760")
    yield driver
    driver.quit()


def test_the_page_streams_text_and_stops(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    assert browser.title == "gpt2_simple"
    for field, value in (("prompt", "The weather today"), ("length", "100000"), ("seed", "3")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.execute_script(RECORD)
    browser.find_element(By.ID, "generate").click()
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    # The text grows in several steps while the request runs.
    wait.until(lambda b: len(set(b.execute_script("return window.lengths"))) >= 5)
    assert browser.find_element(By.ID, "generate").get_attribute("disabled") == "true"
    lengths = browser.execute_script("return window.lengths")
    assert lengths == sorted(lengths) and lengths[-1] > 0
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: b.find_element(By.ID, "status").text == "stopped")
    assert browser.find_element(By.ID, "stop").get_attribute("disabled") == "true"
    text = browser.find_element(By.ID, "completion").text
    assert text and browser.find_element(By.ID, "output").text.startswith("The weather today")
    # Stopping closed the request: the server is idle again, long before 100000 tokens.
    for _ in range(2000):
        state = httpx.get(server + "/health").json()
        if state["running"] == 0:
            break
    assert state["running"] == 0 and state["tokens"] < 50000
    folder = os.environ.get("TEST_ARTIFACTS", "test-artifacts")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "serve_page.png")
    assert browser.save_screenshot(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
