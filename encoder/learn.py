"""Learning a byte-level BPE vocabulary from text, the way GPT-2's was made.

Learning runs the encoder's three steps (see `bpe.py`) backwards, to find the merges:

1. **Count words.** The text is cut into pieces by the same pattern the encoder uses
   (`PATTERN`), and each distinct piece ("word") is counted. Merges never cross pieces, so from
   here on only the distinct words and their counts matter, not the text.
2. **Bytes to symbols.** Each word becomes the symbols of its UTF-8 bytes (`bytes_to_unicode`),
   so the starting vocabulary is the 256 byte symbols and every text stays encodable.
3. **Merge.** Count every adjacent pair of symbols over all words, weighted by the word's count.
   The most frequent pair (ties go to the smallest pair, so the result is deterministic)
   becomes the next line of `vocab.bpe` and the next id of `encoder.json`, and is merged in
   every word, left to right, exactly as `Encoder.bpe` will merge it. Repeat until the
   vocabulary has `vocab_size` tokens or no pair occurs `min_frequency` times.

Merging a pair changes only the words that contain it, so the pair counts are updated for
those words alone (an index from each pair to the words holding it), and the most frequent pair
is kept in a heap whose stale entries are corrected when they reach the top. A few MB of text
learns an 8000-token vocabulary in seconds.

This module owns learning and writing the two files; reading them is `vocab.py`'s, applying
them `bpe.py`'s.

    python -m encoder.learn corpus.txt --vocab-size 8000 --out models/mymodel
"""
import argparse
import collections
import heapq
import json
import os
import sys
import warnings

from .bpe import ENDOFTEXT, PATTERN, bytes_to_unicode, merge_pair
from .files import _blocks, open_atomic
from .vocab import ENCODER_FILE, MERGES_FILE, get_encoder

VERSION_LINE = "#version: 0.2"  # the first line of OpenAI's vocab.bpe
_BLOCK_CHARS = 1 << 20  # characters of a file read at once


def learn_bpe(texts_or_paths, vocab_size, out_dir, *, min_frequency=2, overwrite=False):
    """Learn a GPT-2 vocabulary from text and write `out_dir/encoder.json` and `out_dir/vocab.bpe`.

    Args:
        texts_or_paths: a text file, a text, or a list of them. A `pathlib.Path` (any
            `os.PathLike`) or a str naming an existing file is a file, read in blocks (UTF-8;
            invalid bytes become U+FFFD), so it need not fit in memory; any other str is text.
            A str without whitespace that names no file is taken for a mistyped path.
        vocab_size: tokens in the vocabulary: the 256 byte tokens, one per merge, and
            `<|endoftext|>` (GPT-2's is 50257). At least 257.
        out_dir: the folder to write (created if missing), e.g. a new model folder.
        min_frequency: a pair that occurs fewer times than this is never merged.
        overwrite: replace vocabulary files already in `out_dir`.

    Returns:
        The `Encoder` of the written files. When the text runs out of pairs to merge before
        `vocab_size`, the vocabulary is smaller and a warning says so.

    Raises:
        ValueError: a bad `vocab_size` or `min_frequency`.
        FileNotFoundError: a path that does not exist.
        FileExistsError: `out_dir` already has vocabulary files and `overwrite` is False.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer of at least 257 (the 256 byte tokens and "
                         f"{ENDOFTEXT}); 8000 suits a few MB of text")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency!r} must be a positive integer (2 skips pairs seen once)")
    existing = [n for n in (ENCODER_FILE, MERGES_FILE) if os.path.exists(os.path.join(out_dir, n))]
    if existing and not overwrite:
        raise FileExistsError(f"out_dir={str(out_dir)!r} already has {' and '.join(existing)}; pick another folder "
                              "or pass overwrite=True to replace them")
    words = count_words(texts_or_paths)
    merges, tokens = learn_merges(words, vocab_size - 257, min_frequency)
    if len(tokens) < vocab_size - 257:
        warnings.warn(f"the text has no more pairs seen at least min_frequency={min_frequency} times: the vocabulary "
                      f"has {len(tokens) + 257} tokens, not vocab_size={vocab_size}; pass more text or a smaller "
                      "vocab_size", stacklevel=2)
    write_vocab(out_dir, merges, tokens)
    return get_encoder(out_dir)


def count_words(texts_or_paths):
    """How often each pretokenizer piece occurs: `Counter({piece: count})` over all inputs."""
    if isinstance(texts_or_paths, (str, bytes, os.PathLike)):
        texts_or_paths = [texts_or_paths]
    counts = collections.Counter()
    for item in texts_or_paths:
        if isinstance(item, os.PathLike) or (isinstance(item, str) and os.path.isfile(item)):
            path = os.fspath(item)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"texts_or_paths: {path} is not a file; pass an existing text file")
            for block in _blocks(path, _BLOCK_CHARS):
                counts.update(PATTERN.findall(block))
        elif isinstance(item, str):
            if item and not any(c.isspace() for c in item):
                raise FileNotFoundError(f"texts_or_paths: {item!r} names no file (a text would hold whitespace); "
                                        "pass an existing text file")
            counts.update(PATTERN.findall(item))
        else:
            raise ValueError(f"texts_or_paths holds {type(item).__name__} {item!r:.40}; pass str texts or file paths")
    return counts


def learn_merges(words, n_tokens, min_frequency=2):
    """The merges of `words` (`{piece: count}`), most frequent pair first.

    Returns:
        `(merges, tokens)`: the `(left, right)` symbol pairs in merge order, and the new tokens
        they make (`left + right`) in id order, at most `n_tokens` of them. A merge whose result
        is already a token (possible by two routes, `a + bc` and `ab + c`) is kept, since the
        encoder must apply it, but adds no token.
    """
    byte_symbol = bytes_to_unicode()
    symbols = collections.Counter()
    for piece, count in words.items():
        symbols["".join(byte_symbol[b] for b in piece.encode("utf-8"))] += count
    pairs = _PairCounts(list(symbols), list(symbols.values()))
    known = set(byte_symbol.values())
    merges, tokens = [], []
    while len(tokens) < n_tokens:
        pair, count = pairs.most_frequent()
        if pair is None or count < min_frequency:
            break
        pairs.merge(pair)
        merges.append(pair)
        if pair[0] + pair[1] not in known:
            known.add(pair[0] + pair[1])
            tokens.append(pair[0] + pair[1])
    return merges, tokens


class _PairCounts:
    """Adjacent-pair counts over a set of words, updated as pairs are merged."""

    def __init__(self, words, counts):
        self.words = [list(w) for w in words]  # each word as its current symbols
        self.counts = counts
        self.pair_count = collections.Counter()
        self.pair_words = collections.defaultdict(set)  # pair -> indexes of the words that hold it
        for index, word in enumerate(self.words):
            for pair in zip(word, word[1:]):
                self.pair_count[pair] += counts[index]
                self.pair_words[pair].add(index)
        # Entries (-count, pair): the top is the most frequent pair, the smallest on ties. An entry
        # may overstate its pair's count (counts only fall lazily); none understates it.
        self.heap = [(-count, pair) for pair, count in self.pair_count.items()]
        heapq.heapify(self.heap)

    def most_frequent(self):
        """`(pair, count)` of the most frequent pair, or `(None, 0)` when no pair is left."""
        while self.heap:
            negative, pair = self.heap[0]
            count = self.pair_count.get(pair, 0)
            if -negative == count:
                return pair, count
            if count:  # stale: put it back with its true count
                heapq.heapreplace(self.heap, (-count, pair))
            else:
                heapq.heappop(self.heap)
        return None, 0

    def merge(self, pair):
        """Merge `pair` in every word that holds it and update the counts of those words' pairs."""
        grown = set()
        for index in sorted(self.pair_words.pop(pair)):
            old = self.words[index]
            new = merge_pair(old, pair)
            before, after = collections.Counter(zip(old, old[1:])), collections.Counter(zip(new, new[1:]))
            count = self.counts[index]
            for p, n in before.items():
                self.pair_count[p] -= n * count
                if p not in after and p != pair:
                    self.pair_words[p].discard(index)
            for p, n in after.items():
                self.pair_count[p] += n * count
                self.pair_words[p].add(index)
                if n > before.get(p, 0):
                    grown.add(p)
            self.words[index] = new
        del self.pair_count[pair]
        for p in grown:
            heapq.heappush(self.heap, (-self.pair_count[p], p))


def write_vocab(out_dir, merges, tokens):
    """Write `encoder.json` and `vocab.bpe` in OpenAI's format, each atomically.

    `encoder.json`: the 256 byte symbols in GPT-2's order (ids 0..255: the printable bytes as
    themselves, then the others from U+0100 on), the merged tokens, then `<|endoftext|>`; ASCII
    JSON on one line. `vocab.bpe`: the version line, then one `left right` merge per line, each
    ending in a newline (OpenAI's reader drops the last line).
    """
    encoder = {symbol: i for i, symbol in enumerate(sorted(bytes_to_unicode().values()))}
    for token in tokens:
        encoder[token] = len(encoder)
    encoder[ENDOFTEXT] = len(encoder)
    os.makedirs(out_dir, exist_ok=True)
    _write_atomic(os.path.join(out_dir, ENCODER_FILE), json.dumps(encoder))
    _write_atomic(os.path.join(out_dir, MERGES_FILE), VERSION_LINE + "\n" + "".join(f"{a} {b}\n" for a, b in merges))


def _write_atomic(path, text):
    with open_atomic(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def main(argv=None):
    """`python -m encoder.learn FILE... --vocab-size N --out DIR`; returns the exit code."""
    import pathlib

    parser = argparse.ArgumentParser(prog="python -m encoder.learn",
                                     description="Learn a GPT-2 byte-level BPE vocabulary from text files.")
    parser.add_argument("files", nargs="+", type=pathlib.Path, help="UTF-8 text files")
    parser.add_argument("--vocab-size", "--vocab_size", type=int, required=True,
                        help="tokens in the vocabulary, including the 256 bytes and <|endoftext|>")
    parser.add_argument("--out", "--out_dir", required=True, help="folder for encoder.json and vocab.bpe")
    parser.add_argument("--min-frequency", "--min_frequency", type=int, default=2,
                        help="never merge a pair seen fewer times (default: %(default)r)")
    parser.add_argument("--overwrite", action="store_true", help="replace vocabulary files already in --out")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            enc = learn_bpe(args.files, args.vocab_size, args.out, min_frequency=args.min_frequency,
                            overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        print(f"{parser.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"{parser.prog}: warning: {warning.message}", file=sys.stderr)
    print(f"Wrote {os.path.join(args.out, ENCODER_FILE)} ({len(enc.encoder)} tokens) and "
          f"{os.path.join(args.out, MERGES_FILE)} ({len(enc.bpe_ranks)} merges)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
