"""GPT-2's byte-level BPE: text <-> token ids, byte-exact with OpenAI's encoder.

How GPT-2 turns text into ids, in three steps:

1. **Pre-tokenise.** A regular expression cuts the text into pieces: contractions ('s, 't,
   're, 've, 'm, 'll, 'd), runs of letters, runs of digits and runs of other symbols (each with
   at most one leading space), and runs of whitespace. A whitespace run that precedes a
   non-space character leaves its last space to that character (`\\s+(?!\\S)`), which is why
   " world" is one piece. No piece ever spans two of these classes, so BPE never merges across
   words.
2. **Bytes to symbols.** Each piece is encoded as UTF-8 and every byte is mapped to a printable
   unicode character (`bytes_to_unicode`), so BPE works on strings with no whitespace or
   control characters and every byte sequence is representable: nothing is ever "unknown".
3. **Merge.** Starting from single symbols, repeatedly merge the adjacent pair that ranks
   highest in `vocab.bpe` (earlier lines rank higher) until no adjacent pair is in the table.
   Each resulting symbol string is a key of `encoder.json`, whose value is the token id.

Decoding reverses steps 3 and 2: ids -> symbol strings -> bytes -> UTF-8 text (invalid byte
sequences, which a model can produce, become U+FFFD instead of raising).

This module owns the algorithm and the `Encoder` class; reading the vocabulary files is
`vocab.py`'s, encoding large files on all cores is `files.py`'s.
"""
import functools

import regex

# OpenAI's pre-tokenisation pattern, verbatim (it needs the `regex` module for \p{L} / \p{N}).
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"
# Pieces remembered per Encoder (about 170 bytes each, so ~45 MB at most); the cache is emptied
# when full. English text needs far fewer; the bound matters for endless novel pieces.
_CACHE_LIMIT = 1 << 18


@functools.lru_cache(maxsize=None)
def bytes_to_unicode():
    """The reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68
    (control characters, space, ...) map to the characters from U+0100 on, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


class Encoder:
    """Byte-level BPE encoder and decoder.

    Args:
        encoder: symbol string -> token id (the contents of `encoder.json`).
        bpe_merges: the merge rules `(left, right)`, highest priority first (`vocab.bpe`).
        errors: how `decode` treats invalid UTF-8 (a `bytes.decode` errors value).

    Attributes:
        encoder, decoder: the vocabulary both ways.
        eot_token: the id of `<|endoftext|>` (50256 in GPT-2's vocabulary), or None.
    """

    def __init__(self, encoder, bpe_merges, errors="replace"):
        self.encoder = encoder
        self.decoder = {i: s for s, i in encoder.items()}
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(bpe_merges)}
        self.errors = errors
        self.eot_token = encoder.get(ENDOFTEXT)
        byte_encoder = bytes_to_unicode()
        self._byte_symbols = [byte_encoder[b] for b in range(256)]
        self._symbol_bytes = {s: b for b, s in byte_encoder.items()}
        # Decoding table: id -> the bytes it stands for.
        self._token_bytes = {i: bytes(self._symbol_bytes[c] for c in s) for i, s in self.decoder.items()}
        self._cache = {}  # piece of text -> tuple of ids

    def bpe(self, symbols):
        """Merge a piece's symbol string; returns the list of merged symbol strings."""
        word = list(symbols)
        ranks = self.bpe_ranks
        while len(word) > 1:
            # The best-ranked adjacent pair; unknown pairs rank after every known one.
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            word = merge_pair(word, best)
        return word

    def _encode_piece(self, piece):
        """The ids of one pretokenizer piece (steps 2 and 3), remembered in the cache."""
        symbols = "".join([self._byte_symbols[b] for b in piece.encode("utf-8")])
        whole = self.encoder.get(symbols)
        if whole is not None:  # a piece that is itself a token needs no merging (most words)
            ids = (whole,)
        else:
            ids = tuple(self.encoder[s] for s in self.bpe(symbols))
        if len(self._cache) >= _CACHE_LIMIT:  # checked per new piece: one huge text stays bounded
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text):
        """Token ids of `text`, treating every character as ordinary text."""
        cache = self._cache
        ids = []
        extend = ids.extend
        for piece in PATTERN.findall(text):
            hit = cache.get(piece)
            extend(hit if hit is not None else self._encode_piece(piece))
        return ids

    def encode(self, text, *, allow_special=False):
        """Token ids of `text`.

        Args:
            text: a str.
            allow_special: by default (as in OpenAI's encoder and gpt-2-simple) the literal
                string `<|endoftext|>` is ordinary text, 7 tokens. With True, each occurrence
                becomes the single id `eot_token` (50256) and the text around it is encoded
                as usual.

        Returns:
            A list of ints.
        """
        if not allow_special or self.eot_token is None or ENDOFTEXT not in text:
            return self.encode_ordinary(text)
        ids = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eot_token)
            ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, tokens):
        """Text of token ids (a list, tuple or integer numpy array); invalid UTF-8 becomes U+FFFD.

        Raises:
            ValueError: an id that is not in the vocabulary.
        """
        return self.decode_bytes(tokens).decode("utf-8", errors=self.errors)

    def decode_bytes(self, tokens):
        """The bytes of token ids: `decode` before UTF-8, which may split a character across tokens.

        Raises:
            ValueError: an id that is not in the vocabulary.
        """
        try:
            return b"".join([self._token_bytes[int(t)] for t in tokens])
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in the vocabulary of {len(self.decoder)} tokens") from None


def merge_pair(symbols, pair):
    """`symbols` with every occurrence of `pair` merged into one symbol, left to right.

    This is one merge step of BPE, shared by encoding (`Encoder.bpe`) and learning
    (`learn.py`), so a learned merge is applied exactly as the encoder will apply it.
    """
    left, right = pair
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
            merged.append(left + right)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged
