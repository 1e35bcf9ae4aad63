"""Dataset loading and window sampling: exact token ids, joining rules, cache, WindowSampler."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from gpt2_simple.training import dataset, encoding, token_cache
from gpt2_simple.training.windows import WindowSampler

EOT = [27, 91, 437, 1659, 5239, 91, 29]  # the literal "<|endoftext|>" as ordinary BPE tokens
SOT = [27, 91, 9688, 1659, 5239, 91, 29]  # the literal "<|startoftext|>"
HELLO_WORLD = [15496, 995]  # "Hello world"


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return str(path)


def tokens_of(chunks):
    return [[int(t) for t in chunk] for chunk in chunks]


# ---------------------------------------------------------------------------------------------
# Text files and the combine rule


def test_small_txt_exact_tokens(enc, tmp_path, capsys):
    path = write(tmp_path / "a.txt", "Hello world")
    chunks = dataset.load_dataset(enc, path)
    assert tokens_of(chunks) == [HELLO_WORLD + EOT]  # a file below `combine` gets a separator
    assert chunks[0].dtype == np.uint16
    out = capsys.readouterr().out
    assert out.splitlines() == ["Loading dataset...", "dataset has 9 tokens"]


def test_two_files_join_with_literal_endoftext(enc, tmp_path):
    write(tmp_path / "a.txt", "Hello")
    write(tmp_path / "b.txt", " world")
    joined = dataset.load_dataset(enc, str(tmp_path))
    assert tokens_of(joined) == [[15496] + EOT + [995] + EOT]
    # Each file reaches combine=5 characters on its own: two chunks, no separators.
    split = dataset.load_dataset(enc, str(tmp_path), combine=5)
    assert tokens_of(split) == [[15496], [995]]


def test_crlf_normalised_like_text_mode(enc, tmp_path):
    path = write(tmp_path / "a.txt", b"a\r\nb\rc\n")
    assert tokens_of(dataset.load_dataset(enc, path, combine=1)) == [enc.encode("a\nb\nc\n")]


def test_invalid_utf8_one_warning_and_replacement(enc, tmp_path):
    path = write(tmp_path / "bad.txt", b"ab\xff\xfecd\xff")
    with pytest.warns(UnicodeWarning) as record:
        chunks = dataset.load_dataset(enc, path, combine=1)
    assert len(record) == 1
    assert "bad.txt" in str(record[0].message) and "3 invalid" in str(record[0].message)
    assert tokens_of(chunks) == [enc.encode("ab\ufffd\ufffdcd\ufffd")]
    assert enc.decode(chunks[0].tolist()) == "ab\ufffd\ufffdcd\ufffd"


def test_valid_utf8_no_warning(enc, tmp_path):
    path = write(tmp_path / "ok.txt", "caf\u00e9 \u2603")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunks = dataset.load_dataset(enc, path, combine=1)
    assert enc.decode(chunks[0].tolist()) == "caf\u00e9 \u2603"


def test_binary_file_rejected(enc, tmp_path):
    path = write(tmp_path / "model.bin", b"\x89PNG\x00\x00\x01")
    with pytest.raises(ValueError, match=r"model\.bin.*not a text file.*\.txt/\.csv/\.npz"):
        dataset.load_dataset(enc, path)


def test_empty_file_rejected(enc, tmp_path):
    path = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty.txt.*no tokens"):
        dataset.load_dataset(enc, path)


# ---------------------------------------------------------------------------------------------
# Large files: the on-disk token cache


def test_large_file_cache_matches_and_is_reused(enc, tmp_path, monkeypatch):
    text = "The quick brown fox jumps over the lazy dog.\n" * 20 + "caf\u00e9"
    path = write(tmp_path / "data" / "big.txt", text)
    expected = tokens_of(dataset.load_dataset(enc, path, combine=1))  # in-memory path
    assert expected == [enc.encode(text)]

    calls = []
    real = token_cache._encode_file
    monkeypatch.setattr(token_cache, "_encode_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(dataset, "LARGE_FILE_BYTES", 100)
    cache = tmp_path / "cache"
    first = dataset.load_dataset(enc, path, cache_dir=str(cache))
    assert isinstance(first[0], np.memmap) and first[0].dtype == np.uint16
    assert tokens_of(first) == expected  # its own chunk: no trailing separator
    assert len(calls) == 1
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".gpt2tok")] == []

    second = dataset.load_dataset(enc, path, cache_dir=str(cache))
    assert tokens_of(second) == expected and len(calls) == 1  # read back, not re-encoded

    monkeypatch.setenv("GPT2_SIMPLE_CACHE", str(cache))  # same cache found through the env
    assert tokens_of(dataset.load_dataset(enc, path)) == expected and len(calls) == 1

    os.utime(path, ns=(0, 0))  # a changed mtime is a new key
    assert tokens_of(dataset.load_dataset(enc, path, cache_dir=str(cache))) == expected
    assert len(calls) == 2


def test_large_file_parallel_encoding_matches_in_memory(enc, tmp_path, monkeypatch):
    data = ("Caf\u00e9 r\u00e9sum\u00e9 \u2603!\r\n  tabs\tand 123 numbers.\r" * 40).encode() + b"\xff end"
    path = write(tmp_path / "big.txt", data)
    with pytest.warns(UnicodeWarning):
        expected = tokens_of(dataset.load_dataset(enc, path, combine=1))
    monkeypatch.setattr(dataset, "LARGE_FILE_BYTES", 100)
    monkeypatch.setattr(token_cache, "_BYTES_PER_PROCESS", len(data) // 2)  # two worker processes
    with pytest.warns(UnicodeWarning, match="big.txt: 1 invalid") as record:
        chunks = dataset.load_dataset(enc, path, cache_dir=str(tmp_path / "cache"))
    assert len(record) == 1
    assert isinstance(chunks[0], np.memmap) and tokens_of(chunks) == expected
    assert os.listdir(tmp_path / "cache") == [os.path.basename(chunks[0].filename)]


def test_large_file_does_not_join_buffer(enc, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "LARGE_FILE_BYTES", 20)
    write(tmp_path / "a.txt", "Hello")
    write(tmp_path / "b.txt", "Hello world and more words here")
    write(tmp_path / "c.txt", " world")
    chunks = dataset.load_dataset(enc, str(tmp_path), cache_dir=str(tmp_path / ".cache"))
    big = enc.encode("Hello world and more words here")
    assert tokens_of(chunks) == [big, [15496] + EOT + [995] + EOT]


def test_cache_root_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("GPT2_SIMPLE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert token_cache.cache_root() == os.path.join(str(tmp_path), "gpt2_simple")
    monkeypatch.setenv("GPT2_SIMPLE_CACHE", "/x/y")
    assert token_cache.cache_root() == "/x/y"
    assert token_cache.cache_root("/z") == "/z"


# ---------------------------------------------------------------------------------------------
# CSV and NPZ


CSV = 'text,label\nHello world,1\n"line one\nline two, ""quoted""",2\n\n,3\n'


def test_csv_rows_with_header_and_multiline_cell(enc, tmp_path):
    path = write(tmp_path / "d.csv", CSV)
    chunks = dataset.load_dataset(enc, path)
    docs = ["Hello world", 'line one\nline two, "quoted"', ""]
    text = "".join("<|startoftext|>" + d + "<|endoftext|>\n" for d in docs)
    assert tokens_of(chunks) == [enc.encode(text)]  # CSV text gets no trailing separator
    assert chunks[0][:9].tolist() == SOT + HELLO_WORLD
    assert chunks[0][9:16].tolist() == EOT


def test_csv_without_text_rejected(enc, tmp_path):
    path = write(tmp_path / "d.csv", "text,label\n,1\n")
    with pytest.raises(ValueError, match="d.csv.*first column"):
        dataset.load_dataset(enc, path)


def test_encode_csv(tmp_path):
    path = write(tmp_path / "d.csv", CSV)
    out = str(tmp_path / "out.txt")
    assert encoding.encode_csv(path, out_path=out) == out
    lines = open(out, encoding="utf-8").read()
    assert lines == (
        "<|startoftext|>Hello world<|endoftext|>\n"
        '<|startoftext|>line one\nline two, "quoted"<|endoftext|>\n'
        "<|startoftext|><|endoftext|>\n"
    )
    encoding.encode_csv(path, out_path=out, header=False, start_token="[", end_token="]")
    assert open(out, encoding="utf-8").read().startswith("[text]\n[Hello world]\n")
    assert sorted(os.listdir(tmp_path)) == ["d.csv", "out.txt"]  # no temporary file left


def test_encode_dataset_npz_round_trip(enc, real_vocab_dir, tmp_path, capsys):
    model_dir = tmp_path / "models"
    shutil.copytree(real_vocab_dir, model_dir / "124M")
    write(tmp_path / "txt" / "a.txt", "Hello")
    write(tmp_path / "txt" / "b.txt", " world")
    out = str(tmp_path / "enc.npz")
    result = encoding.encode_dataset(str(tmp_path / "txt"), model_dir=str(model_dir), out_path=out,
                                     combine=5)
    assert result == out
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Reading files" and printed[-1] == f"Writing {out}"
    with np.load(out) as npz:
        assert npz.files == ["arr_0", "arr_1"]
        assert npz["arr_0"].dtype == np.uint16
        assert [npz[k].tolist() for k in npz.files] == [[15496], [995]]
    assert tokens_of(dataset.load_dataset(enc, out)) == [[15496], [995]]


def test_encode_dataset_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download_gpt2\(model_name='124M'\)"):
        encoding.encode_dataset(str(tmp_path), model_dir=str(tmp_path / "models"))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([1, "a"], dtype=object), "Python objects"),
        (np.array([1.0, 2.0]), "integer"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([1, 50257]), r"outside \[0, 50257\)"),
        (np.array([-1, 3]), "outside"),
    ],
)
def test_bad_npz_rejected(enc, tmp_path, array, message):
    path = str(tmp_path / "bad.npz")
    np.savez(path, good=np.array([1, 2]), tokens=array)
    with pytest.raises(ValueError, match=f"bad.npz.*'tokens'.*{message}"):
        dataset.load_dataset(enc, path)


# ---------------------------------------------------------------------------------------------
# Path resolution


def test_directory_walk_sorted_skips_hidden_and_cache(enc, tmp_path):
    for name in ["b.txt", "a/z.txt", "a/b/y.txt", "c.txt", ".hidden.txt", ".git/x.txt",
                 "abc.gpt2tok"]:
        write(tmp_path / name, name)
    found = [os.path.relpath(p, tmp_path) for p in dataset.resolve_paths(str(tmp_path))]
    assert found == ["a/b/y.txt", "a/z.txt", "b.txt", "c.txt"]
    chunks = dataset.load_dataset(enc, str(tmp_path))
    assert enc.decode(chunks[0].tolist()) == "<|endoftext|>".join(found) + "<|endoftext|>"


def test_glob_and_single_file(tmp_path):
    for name in ["b.txt", "a.txt", "c.md", "sub/d.txt"]:
        write(tmp_path / name, "x")
    found = dataset.resolve_paths(str(tmp_path / "*.txt"))
    assert found == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    deep = dataset.resolve_paths(str(tmp_path / "**" / "*.txt"))
    assert [os.path.relpath(p, tmp_path) for p in deep] == ["a.txt", "b.txt", "sub/d.txt"]
    assert dataset.resolve_paths(tmp_path / "c.md") == [str(tmp_path / "c.md")]


def test_missing_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt.*directory.*glob"):
        dataset.resolve_paths(missing)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="emptydir"):
        dataset.resolve_paths(str(tmp_path / "emptydir"))


# ---------------------------------------------------------------------------------------------
# WindowSampler, stream mode

CHUNKS = [np.arange(0, 5), np.arange(100, 112), np.arange(1000, 1030)]  # distinct value ranges


def test_sampler_windows_stay_inside_one_chunk():
    sampler = WindowSampler(CHUNKS, seed=1)
    assert sum(map(len, sampler.chunks)) == 47 and sampler.longest == 30
    for _ in range(500):
        window = sampler.sample(4)
        assert window.dtype == np.int32 and window.shape == (4,)
        assert np.all(np.diff(window) == 1)  # consecutive inside one chunk, never across
    batch = sampler.sample_batch(3, 12)
    assert batch.shape == (3, 12) and batch.dtype == np.int32
    assert np.all(batch >= 100)  # only chunks of >= 12 tokens can hold a 12-token window


def test_sampler_same_seed_same_windows_and_exact_values():
    a = WindowSampler(CHUNKS, seed=123).sample_batch(6, 3)
    b = WindowSampler(CHUNKS, seed=123).sample_batch(6, 3)
    np.testing.assert_array_equal(a, b)
    c = WindowSampler(CHUNKS, seed=124).sample_batch(6, 3)
    assert not np.array_equal(a, c)
    # The draw is "index into the cumulative count of valid starts": reproduce it by hand.
    rng = np.random.Generator(np.random.PCG64(123))
    starts = [int(s) for c in CHUNKS for s in c[: len(c) - 2]]  # 3 + 10 + 28 = 41 starts
    expected = [starts[int(rng.integers(41))] for _ in range(6)]
    assert a[:, 0].tolist() == expected


def test_sampler_state_resumes_identically():
    sampler = WindowSampler(CHUNKS, seed=7)
    sampler.sample_batch(5, 4)
    state = json.loads(json.dumps(sampler.get_state()))  # survives a JSON round trip
    expected = sampler.sample_batch(8, 4)
    resumed = WindowSampler(CHUNKS, seed=None)
    resumed.set_state(state)
    np.testing.assert_array_equal(resumed.sample_batch(8, 4), expected)
    with pytest.raises(ValueError, match="get_state"):
        resumed.set_state({"bit_generator": "MT19937"})


def test_sampler_is_uniform_over_valid_positions():
    sampler = WindowSampler(CHUNKS, seed=0)
    positions = [int(s) for c in CHUNKS for s in c[: len(c) - 3]]  # 2 + 9 + 27 = 38 starts
    draws = 38 * 400
    counts = dict.fromkeys(positions, 0)
    for _ in range(draws):
        counts[int(sampler.sample(4)[0])] += 1
    expected = draws / len(positions)
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi2 < 70.0  # 37 degrees of freedom: p = 0.001 at 69.3
    # Per chunk: proportional to its number of valid starts (2/38, 9/38, 27/38).
    first = sum(n for p, n in counts.items() if p < 100) / draws
    assert abs(first - 2 / 38) < 0.01


def test_sampler_dataset_shorter_than_context(enc, tmp_path):
    path = write(tmp_path / "tiny.txt", "one two three")  # 3 tokens + 7 separator tokens
    sampler = WindowSampler(dataset.load_dataset(enc, path), seed=0)
    assert sampler.longest == 10 and sum(map(len, sampler.chunks)) == 10
    window = min(1024, sampler.longest)
    assert sampler.sample(window).tolist() == [505, 734, 1115] + EOT
    with pytest.raises(ValueError, match=r"11 must be in \[1, 10\].*min\(n_ctx, sampler.longest\)"):
        sampler.sample(11)
    with pytest.raises(ValueError, match="no tokens"):
        WindowSampler([np.zeros(0, np.int32)])
