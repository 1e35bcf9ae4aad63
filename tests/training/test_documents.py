"""Documents mode (line_by_line=True): files to document streams, windows that start at a document,
the run folder's record, and generation of one document per sample."""
import json
import os

import numpy as np
import pytest
from runs import make_tiny_model, snapshot, trained_run

import gpt2_simple as gpt2
from encoder import get_encoder
from gpt2_simple.training import dataset, documents, encoding, windows
from gpt2_simple.training.windows import WindowSampler

EOT = 50256
TWEETS = ["Just landed in Paris!", "Coffee first, then code.", "Who else is watching the game tonight?",
          "New blog post is up: five lessons from a year of running.", "Rain again. Of course.",
          "<|endoftext|> is just text here", "I can't believe it's Friday already", "Good morning, world"]


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def _split_stream(stream):
    """The documents of a stream `[eot] doc [eot] doc ...` as token lists."""
    stream = [int(t) for t in stream]
    assert stream[0] == EOT
    docs, current = [], None
    for token in stream:
        if token == EOT:
            current = []
            docs.append(current)
        else:
            current.append(token)
    return docs


def _check_windows(sampler, docs_tokens, length, draws=300):
    """Every window begins with a separator and the start of a document; separators are single."""
    starts_seen = set()
    for _ in range(draws):
        window = sampler.sample(length).tolist()
        assert window[0] == EOT
        assert all(not (a == EOT and b == EOT) for a, b in zip(window, window[1:])), window
        after = window[1:]
        match = [i for i, doc in enumerate(docs_tokens) if doc[: len(after)] == after[: len(doc)]]
        assert match, window
        starts_seen.add(match[0])
    return starts_seen


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_short_documents_round_trip_and_windows_start_at_a_document(tmp_path, enc, kind):
    if kind == "txt":
        path = _write(tmp_path / "tweets.txt", "\n".join(TWEETS[:3]) + "\n\n   \n" + "\n".join(TWEETS[3:]) + "\n")
    else:
        path = _write(tmp_path / "tweets.jsonl", "".join(json.dumps({"id": i, "text": t}) + "\n" + ("\n" if i == 2 else "")
                                                           for i, t in enumerate(TWEETS)))
    chunks = documents.load_documents(enc, path)
    assert len(chunks) == 1
    stream = chunks[0]
    docs = _split_stream(stream)
    assert [enc.decode(d) for d in docs] == TWEETS  # round trip, in order, blank lines dropped
    assert docs == [enc.encode(t) for t in TWEETS]  # each encoded on its own
    assert int((stream == EOT).sum()) == len(TWEETS)  # one separator per document, the literal text stays text
    assert enc.encode("<|endoftext|>") == docs[5][:7] and len(enc.encode("<|endoftext|>")) == 7
    sampler = WindowSampler(chunks, seed=0, eot=EOT)
    seen = _check_windows(sampler, docs, length=24)
    assert seen == set(range(len(TWEETS)))  # every document is a start, the last one too (the ring)


def test_csv_rows_and_a_mixed_folder(tmp_path, enc):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "a.csv", 'text,label\n"Line one, with a comma",1\n,2\n"Two\nlines",3\n')
    _write(folder / "b.jsonl", json.dumps({"body": "from json"}) + "\n")
    _write(folder / "c.txt", "from text\n")
    chunks = documents.load_documents(enc, str(folder), text_field="body")
    assert [enc.decode(d) for d in _split_stream(chunks[0])] == ["Line one, with a comma", "Two\nlines", "from json",
                                                                 "from text"]


def test_a_long_document_is_cut_into_pieces_not_dropped(enc):
    long_doc = list(range(100, 160))  # 60 tokens
    stream = np.array([EOT, 1, 2, 3, EOT] + long_doc, np.uint16)
    starts = windows.window_starts(stream, EOT, 16).tolist()
    # Short document at 0; the long one at 4, then every 16 tokens through its 61 tokens.
    assert starts == [0, 4, 20, 36, 52]
    sampler = WindowSampler([stream], seed=3, eot=EOT)
    covered = set()
    for _ in range(200):
        window = sampler.sample(16).tolist()
        covered.update(t for t in window if 100 <= t < EOT)
    assert covered == set(long_doc)


def test_large_file_goes_through_the_cache_with_the_mode_in_its_key(tmp_path, enc, monkeypatch):
    monkeypatch.setattr(dataset, "LARGE_FILE_BYTES", 64)
    cache = tmp_path / "cache"
    path = _write(tmp_path / "big.txt", "\n".join(TWEETS * 3) + "\n")
    first = documents.load_documents(enc, path, cache_dir=str(cache))
    assert isinstance(first[0], np.memmap)
    assert [enc.decode(d) for d in _split_stream(first[0])] == TWEETS * 3
    assert len(os.listdir(cache)) == 1
    again = documents.load_documents(enc, path, cache_dir=str(cache))
    np.testing.assert_array_equal(again[0], first[0])
    assert len(os.listdir(cache)) == 1  # a cache hit
    stream_mode = dataset.load_dataset(enc, path, cache_dir=str(cache))
    assert len(os.listdir(cache)) == 2 and EOT not in np.asarray(stream_mode[0])  # its own entry


def test_jsonl_in_stream_mode_is_wrapped_like_csv_rows(tmp_path, enc):
    path = _write(tmp_path / "d.jsonl", json.dumps({"text": "Hello world"}) + "\n")
    chunks = dataset.load_dataset(enc, path)
    assert chunks[0].tolist() == enc.encode("<|startoftext|>Hello world<|endoftext|>\n")


def test_encode_dataset_line_by_line_round_trips_through_npz(tmp_path, enc, real_vocab_dir):
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    path = _write(tmp_path / "tweets.txt", "\n".join(TWEETS) + "\n")
    out = encoding.encode_dataset(path, model_dir=model_dir, model_name="tiny", out_path=str(tmp_path / "t.npz"),
                                  line_by_line=True)
    chunks = documents.load_documents(enc, out)
    np.testing.assert_array_equal(chunks[0], documents.load_documents(enc, path)[0])


BAD = {
    "not JSON": ('{"text": "ok"}\n{"text": broken}\n', "d.jsonl line 2 is not JSON"),
    "field missing": ('{"text": "ok"}\n\n{"body": "x"}\n', "d.jsonl line 3 has no string field 'text'"),
    "no documents": ("\n   \n\n", "has no non-empty line"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_documents_are_one_line_naming_the_file_and_change_nothing(tmp_path, monkeypatch, real_vocab_dir, case):
    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    content, fragment = BAD[case]
    path = _write(tmp_path / ("d.jsonl" if "JSON" in case or "field" in case else "d.txt"), content)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as info:
        gpt2.finetune(gpt2.start_tf_sess(), path, steps=1, model_name="tiny", model_dir=model_dir, line_by_line=True)
    message = str(info.value)
    assert fragment in message and "\n" not in message, message
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# A run trained on documents


@pytest.fixture(scope="module")
def documents_run(tmp_path_factory, real_vocab_dir):
    """A run fine-tuned 60 steps in documents mode on two documents, which it memorizes (with samples at step 31)."""
    text = "\n".join(["red green blue", "one two three four"] * 20) + "\n"
    with trained_run(tmp_path_factory.mktemp("docs_run"), real_vocab_dir, text, "docs.txt", steps=60, model_name="tiny",
                     batch_size=4, accumulate_gradients=1, learning_rate=1e-2, sample_every=30, sample_length=8, seed=0,
                     line_by_line=True) as run:
        yield run


@pytest.mark.slow
def test_run_folder_records_documents_and_stream_runs_do_not(documents_run):
    run = documents_run["root"] / "checkpoint" / "run1"
    assert json.loads((run / "documents.json").read_text()) == {"line_by_line": True, "separator": EOT}
    gpt2.finetune(gpt2.start_tf_sess(), documents_run["data"], steps=1, model_name="tiny",
                  model_dir=documents_run["model_dir"], run_name="stream", sample_every=0)
    assert not (documents_run["root"] / "checkpoint" / "stream" / "documents.json").exists()


@pytest.mark.slow
def test_training_samples_start_at_a_document(documents_run):
    text = (documents_run["root"] / "samples" / "run1" / "samples-31").read_text(encoding="utf-8")
    assert text.startswith("======== SAMPLE 1 ========\n<|endoftext|>"), text


@pytest.mark.slow
def test_samples_start_after_end_of_text_and_stop_at_the_next(documents_run, monkeypatch):
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="run1")
    sampler = sess.sampler
    calls = []
    original = type(sampler).sample

    def recording(self, context, length, **kwargs):
        out = original(self, context, length, **kwargs)
        calls.append((np.asarray(context).tolist(), out))
        return out

    monkeypatch.setattr(type(sampler), "sample", recording)
    texts = gpt2.generate(sess, nsamples=4, batch_size=2, length=40, temperature=0.7, seed=3, return_as_list=True)
    enc = sess.encoder
    assert len(calls) == 2 and all(row[0] == [EOT] for row, _ in [(c, o) for c, o in calls])
    raw = [row.tolist() for _, out in calls for row in out]
    assert all(EOT in row for row in raw)  # the trained model ends its documents
    assert texts == [enc.decode(row[: row.index(EOT)]) for row in raw]
    assert set(texts) <= {"red green blue", "one two three four"}, texts
    assert max(len(row) for row in raw) < 40  # sampling stopped once every row had ended

    calls.clear()
    with_prefix = gpt2.generate(sess, prefix="one two", nsamples=2, batch_size=2, length=40, seed=3,
                                return_as_list=True)
    assert calls[0][0][0] == [EOT] + enc.encode("one two")
    assert with_prefix == ["one two three four"] * 2
    without = gpt2.generate(sess, prefix="one two", include_prefix=False, length=40, seed=3, return_as_list=True)
    assert without == [" three four"]
    truncated = gpt2.generate(sess, prefix="one two", truncate=" four", length=40, seed=3, return_as_list=True)
    assert truncated == ["one two three"]


@pytest.mark.slow
def test_stream_runs_generate_as_before(documents_run, monkeypatch):
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="stream")
    seen = []
    original = type(sess.sampler).sample
    monkeypatch.setattr(type(sess.sampler), "sample",
                        lambda self, context, length, **kw: seen.append((np.asarray(context)[0].tolist(), kw["stop"]))
                        or original(self, context, length, **kw))
    gpt2.generate(sess, prefix="red", length=5, seed=1, return_as_list=True)
    assert seen == [(get_encoder(documents_run["model_dir"] + "/tiny").encode("red"), None)]


@pytest.mark.slow
def test_a_streamed_sample_of_a_documents_run_ends_where_generate_ends(documents_run):
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="run1")
    for prefix in (None, "one two"):
        for seed in range(6):
            options = dict(prefix=prefix, seed=seed, length=40, temperature=1.0)
            whole = gpt2.generate(sess, return_as_list=True, **options)[0]
            assert "".join(gpt2.generate_stream(sess, **options)) == whole, (prefix, seed)
            assert whole and "<|endoftext|>" not in whole, whole  # one document


@pytest.mark.slow
def test_the_server_reads_a_documents_run_as_generate_does(documents_run):
    import httpx
    from serving import running_server

    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="run1")
    with running_server(sess) as (url, _):
        for prompt, seed in [("one two", s) for s in range(4)] + [("red", s) for s in range(4)]:
            answer = httpx.post(url + "/v1/completions", timeout=120, json={
                "prompt": prompt, "max_tokens": 40, "temperature": 1.0, "seed": seed}).json()["choices"][0]
            whole = gpt2.generate(sess, prefix=prompt, include_prefix=False, length=40, temperature=1.0, seed=seed,
                                  return_as_list=True)[0]
            assert (answer["text"].lstrip("\n"), answer["finish_reason"]) == (whole, "stop"), (prompt, seed)


@pytest.mark.slow
def test_evaluate_scores_a_documents_run_as_documents_by_default(documents_run):
    sess = gpt2.start_tf_sess()
    by_default = gpt2.evaluate(sess, documents_run["data"], run_name="run1", print_table=False)
    as_documents = gpt2.evaluate(sess, documents_run["data"], run_name="run1", line_by_line=True, print_table=False)
    assert by_default == as_documents
    assert "document_loss" in by_default[-1] and by_default[-1]["loss"] < 0.5  # the run memorized its documents


@pytest.mark.slow
def test_evaluate_scores_the_run_the_session_holds(documents_run):
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, documents_run["data"], steps=1, model_name="tiny", model_dir=documents_run["model_dir"],
                  run_name="held", sample_every=0, line_by_line=True)
    rows = gpt2.evaluate(sess, documents_run["data"], checkpoint="latest", print_table=False)
    assert [r["model"] for r in rows] == ["model-1"] and "document_loss" in rows[0]
