"""The gallery: its JSON routes over real HTTP, and the page in headless Chromium (generate, star, reload, export)."""
import json
import os

import httpx
import pytest
from serving import headless_chromium, running_server

import gpt2_simple as gpt2
from gpt2_simple.formats.run_record import read_curves
from gpt2_simple.serving.gallery import read_samples

pytestmark = pytest.mark.slow  # all of this file (a fine-tuned run, a browser): `pytest -m "not slow"` skips it


@pytest.fixture(scope="module")
def server(memorized_run):
    root, model_dir, checkpoint_dir, data = memorized_run
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), checkpoint_dir=checkpoint_dir)
    with running_server(sess, max_tokens=1000) as (url, app):
        yield url, sess


def test_curves_and_samples_come_from_the_run(memorized_run):
    root, model_dir, checkpoint_dir, data = memorized_run
    curves = read_curves(os.path.join(checkpoint_dir, "run1"))
    assert [s for s, _ in curves["loss"]] == list(range(1, 61))
    assert curves["loss"][-1][1] < 0.5 * curves["loss"][0][1]
    assert curves["avg_loss"] == [] and curves["val_loss"] == []  # print_every=100: no average logged; no val_dataset
    samples = read_samples(os.path.join(root, "samples", "run1"))
    assert [s["step"] for s in samples] == [31] and len(samples[0]["texts"]) == 1


def test_routes_generate_star_and_export(server):
    url, sess = server
    fresh = httpx.post(url + "/gallery/generate", json={"n": 2, "length": 24, "temperature": 0.1, "seed": 0},
                       timeout=120).json()
    assert fresh["copies"] is None and len(fresh["samples"]) == 2
    for sample in fresh["samples"]:
        assert sample["mark"].startswith("copied: ") and sample["logprob"] < 0
        a, b = sample["span"]
        copy = sess.copy_index().check(sess.encoder.encode(sample["text"]))
        assert sample["text"][a:b] == sess.encoder.decode(list(copy_tokens(sess, copy)))
    first = fresh["samples"][0]
    stars = httpx.post(url + "/gallery/star", json=dict(first, star=True)).json()["stars"]
    assert [s["text"] for s in stars] == [first["text"]]
    assert httpx.get(url + "/gallery/data").json()["stars"] == stars
    exported = httpx.get(url + "/gallery/export?format=jsonl")
    assert [json.loads(line) for line in exported.text.splitlines()] == stars
    assert httpx.post(url + "/gallery/star", json=dict(first, star=False)).json()["stars"] == []
    dropped = httpx.post(url + "/gallery/generate", json={"n": 2, "length": 24, "temperature": 0.1, "seed": 0,
                                                          "copy_threshold": 12}, timeout=120).json()
    assert (dropped["samples"], dropped["dropped"]) == ([], 2)
    assert httpx.post(url + "/gallery/generate", json={"n": 0}).status_code == 400
    assert httpx.get(url + "/gallery/export?format=csv").status_code == 400


def copy_tokens(sess, copy):
    return sess.copy_index().tokens[copy.offset:copy.offset + copy.longest].tolist()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"), window="1000,900")
    yield driver
    driver.quit()


def test_page_generates_stars_reloads_and_exports(server, browser, memorized_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, sess = server
    wait = WebDriverWait(browser, 120)
    browser.get(url + "/gallery")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#curve_svg polyline[data-tag=loss]"))
    assert browser.find_element(By.ID, "run").text == "run1"
    assert "step 31" in browser.find_element(By.ID, "samples").text
    for name, value in (("n", "3"), ("length", "24"), ("temperature", "0.1")):
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    assert browser.find_element(By.ID, "generate").text == "Generate 3"
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#fresh .card")) == 3)
    cards = browser.find_elements(By.CSS_SELECTOR, "#fresh .card")
    assert all(c.find_elements(By.TAG_NAME, "mark") for c in cards)  # the memorized run copies: highlighted
    assert all("copied: " in c.text and "mean log-prob -" in c.text for c in cards)
    text = cards[1].find_element(By.TAG_NAME, "pre").text
    cards[1].find_element(By.CSS_SELECTOR, ".star").click()
    wait.until(lambda b: b.find_element(By.ID, "star_count").text == "(1)")
    browser.refresh()  # a reload reads the stars back from the run folder
    wait.until(lambda b: b.find_element(By.ID, "star_count").text == "(1)")
    assert browser.find_element(By.CSS_SELECTOR, "#stars pre").text == text
    browser.find_element(By.ID, "export_jsonl").click()
    wait.until(lambda b: b.find_element(By.ID, "export_out").get_attribute("value"))
    exported = [json.loads(line) for line in browser.find_element(By.ID, "export_out").get_attribute("value").splitlines()]
    assert [s["text"].strip() for s in exported] == [text.strip()]
    stars_file = os.path.join(sess.folder, "stars.jsonl")
    assert [json.loads(line)["text"] for line in open(stars_file, encoding="utf-8")] == [exported[0]["text"]]
    os.makedirs(os.environ.get("TEST_ARTIFACTS", "test-artifacts"), exist_ok=True)
    browser.save_screenshot(os.path.join(os.environ.get("TEST_ARTIFACTS", "test-artifacts"), "gallery.png"))
    httpx.post(url + "/gallery/star", json={"text": exported[0]["text"], "star": False})
