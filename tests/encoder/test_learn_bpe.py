"""Learning a BPE vocabulary: GPT-2's file format, merges that an independent counter agrees with,
round trips, determinism, and tiktoken built from the learned files encoding like our Encoder."""
import collections
import json
import os
import pathlib
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runs import subprocess_env
from vocab import local_tiktoken

from encoder import (
    ENDOFTEXT,
    PATTERN,
    bytes_to_unicode,
    get_encoder,
    learn_bpe,
    read_vocab,
)
from encoder import learn as learn_module
from encoder.bpe import merge_pair

SYLLABLES = ["ka", "ri", "to", "mel", "an", "sor", "vi", "de", "lu", "qua", "ne", "bo", "ü", "é", "日", "本"]
SPECIAL = ["naïve", "Straße", "日本語", "😀", "🦊🦊", "Ünïcödé", "I'll", "don't", "3.14", "2024", "<|endoftext|>"]


def pseudo_text(seed, n_lines, n_words=300):
    """Zipf-distributed pseudo-words (the most frequent is 'the') in lines of 4-12 words."""
    rng = random.Random(seed)
    words = ["the"] + ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n_words)]
    words += SPECIAL
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    lines = []
    for _ in range(n_lines):
        line = rng.choices(words, weights, k=rng.randint(4, 12))
        lines.append(" ".join(line).capitalize() + rng.choice([".", "!", "?", ",", ""]))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """(folder, Encoder, training text): a 500-token vocabulary learned from ~100 KB."""
    text = pseudo_text(0, 2500)
    folder = str(tmp_path_factory.mktemp("learned"))
    return folder, learn_bpe(text, 500, folder), text


def test_files_are_gpt2_format(learned, real_vocab_dir):
    folder, enc, _ = learned
    encoder, merges = read_vocab(folder)  # the validating reader
    assert sorted(encoder.values()) == list(range(500)) and encoder[ENDOFTEXT] == 499 == enc.eot_token
    with open(os.path.join(real_vocab_dir, "encoder.json"), encoding="utf-8") as f:
        real = json.load(f)
    assert [(s, i) for s, i in encoder.items() if i < 256] == [(s, i) for s, i in real.items() if i < 256]
    raw = pathlib.Path(folder, "encoder.json").read_bytes()
    assert raw.isascii() and raw.startswith(b'{"!": 0, "\\"": 1,')  # json.dumps defaults, as OpenAI's
    text = pathlib.Path(folder, "vocab.bpe").read_text(encoding="utf-8")
    # OpenAI's reader: the version line and the last (empty) element are dropped.
    assert [tuple(line.split()) for line in text.split("\n")[1:-1]] == merges
    assert text.startswith("#version: 0.2\n") and len(merges) == 500 - 257  # no merge made an existing token
    # merge k makes token 256 + k, the order tiktoken's ranks assume
    assert all(encoder[a + b] == 256 + k for k, (a, b) in enumerate(merges))


def test_frequent_words_become_one_token(learned):
    _, enc, text = learned
    counts = collections.Counter(PATTERN.findall(text))
    frequent = [piece for piece, _ in counts.most_common(5)]
    assert " the" in frequent
    for piece in frequent:
        assert len(enc.encode(piece)) == 1, piece
    assert len(enc.encode(text)) < 0.45 * len(text.encode("utf-8"))  # bytes per token > 2.2


def naive_merges(words, n_merges):
    """The reference: recount every pair of every word before each merge."""
    byte_symbol = bytes_to_unicode()
    state = {tuple(byte_symbol[b] for b in w.encode("utf-8")): c for w, c in words.items()}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for symbols, count in state.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        state = {tuple(merge_pair(list(s), best)): c for s, c in state.items()}
    return merges


def test_incremental_counts_equal_a_full_recount():
    words = learn_module.count_words(pseudo_text(1, 400, n_words=60))
    merges, tokens = learn_module.learn_merges(words, 400)
    assert merges == naive_merges(words, 400)
    assert 150 < len(merges) < 400  # it ran out of pairs seen twice: the whole path was compared


def test_deterministic(tmp_path):
    text = pseudo_text(2, 800)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    learn_bpe(text, 400, tmp_path / "a")
    learn_bpe(text, 400, tmp_path / "b")
    learn_bpe(tmp_path / "corpus.txt", 400, tmp_path / "c")  # the same text from a file
    for name in ("encoder.json", "vocab.bpe"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_files_stream_and_count_like_the_whole_text(tmp_path, monkeypatch):
    text = pseudo_text(3, 300) + "  \n\n  spaces   and\r\nCRLF\n"
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(learn_module, "_BLOCK_CHARS", 97)  # many blocks, cut at safe points only
    expected = collections.Counter(PATTERN.findall(text.replace("\r\n", "\n")))
    assert learn_module.count_words(path) == expected
    assert learn_module.count_words(str(path)) == expected
    both = learn_module.count_words([path, "extra words here"])
    assert both == expected + collections.Counter(PATTERN.findall("extra words here"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trips_and_equals_tiktoken(learned_reference, text):
    enc, reference = learned_reference
    ids = enc.encode(text)
    assert enc.decode(ids) == text
    assert ids == reference.encode_ordinary(text)


def test_held_out_text_equals_tiktoken(learned_reference):
    enc, reference = learned_reference
    held_out = pseudo_text(99, 500) + "".join(SPECIAL) + " Emoji 👩‍👩‍👧 and ÄÖÜ, naïveté, 日本語のテキスト.\n"
    ids = enc.encode(held_out)
    assert ids == reference.encode_ordinary(held_out)
    assert enc.decode(ids) == held_out
    assert max(ids) > 256  # the learned merges are in use


@pytest.fixture(scope="module")
def learned_reference(learned):
    folder, enc, _ = learned
    return enc, local_tiktoken(folder)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=256 must be an integer of at least 257"):
        learn_bpe("some text here", 256, tmp_path / "v")
    with pytest.raises(ValueError, match="min_frequency=0"):
        learn_bpe("some text here", 300, tmp_path / "v", min_frequency=0)
    with pytest.raises(FileNotFoundError, match="'corpus.txx' names no file"):
        learn_bpe("corpus.txx", 300, tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="missing.txt is not a file"):
        learn_bpe(tmp_path / "missing.txt", 300, tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_never_overwrites_without_asking(tmp_path):
    out = tmp_path / "v"
    learn_bpe("hello hello", 258, out)
    before = (out / "vocab.bpe").read_bytes()
    with pytest.raises(FileExistsError, match="already has encoder.json and vocab.bpe; .* overwrite=True"):
        learn_bpe("world world", 258, out)
    assert (out / "vocab.bpe").read_bytes() == before
    learn_bpe("world world", 258, out, overwrite=True)
    assert (out / "vocab.bpe").read_bytes() != before and not any(p.suffix == ".tmp" for p in out.iterdir())


def test_small_text_gives_a_smaller_vocabulary_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="the vocabulary has 261 tokens, not vocab_size=1000"):
        # pairs tie at 2 and the smallest goes first: e-l, el-l, ell-o, h-ello; Ġ-h is seen once
        enc = learn_bpe("hello hello", 1000, tmp_path / "v")
    assert len(enc.encoder) == 261 and enc.encode("hello hello") == [259, 220, 259]


def test_command_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pseudo_text(4, 300), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "encoder.learn", str(corpus), "--vocab-size", "300",
                             "--out", str(tmp_path / "m")], capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no runpy warning
    assert "(300 tokens)" in result.stdout and len(get_encoder(str(tmp_path / "m")).encoder) == 300
    assert learn_module.main([str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "m")]) == 2
    assert learn_module.main([str(tmp_path / "nope.txt"), "--vocab_size", "300", "--out_dir", str(tmp_path)]) == 2
