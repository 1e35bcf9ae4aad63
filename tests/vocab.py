"""Vocabulary helpers for the tests: a toy vocabulary on disk and tiktoken built from local files.

The toy vocabulary is GPT-2's format at its smallest: the 256 byte tokens (ids 0..255, in
`bytes_to_unicode` order, so '!' is 0, 'a' is 64, space 'Ġ' is 220, newline 'Ċ' is 198), the
merges below (merge k makes id 256 + k) and `<|endoftext|>` last. Small enough to work out the
expected ids by hand.
"""
import json
import os

# GPT-2's pretokenizer, written out here (not imported) so the reference cannot share a typo.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TOY_MERGES = [
    ("l", "l"),  # 256 ll
    ("h", "e"),  # 257 he
    ("he", "ll"),  # 258 hell
    ("hell", "o"),  # 259 hello
    ("Ġ", "w"),  # 260 Ġw (" w")
    ("o", "r"),  # 261 or
    ("Ġw", "or"),  # 262 Ġwor (" wor")
    ("b", "c"),  # 263 bc: ranks before "a b", so "abc" is a + bc, not ab + c
    ("a", "b"),  # 264 ab
]
TOY_EOT = 256 + len(TOY_MERGES)  # 265


def write_toy_vocab(folder):
    """Write the toy `encoder.json` and `vocab.bpe` into `folder` (created); returns `folder`."""
    from encoder import bytes_to_unicode

    # Sorted by code point = GPT-2's order: the printable bytes as themselves, then U+0100...
    vocab = {symbol: i for i, symbol in enumerate(sorted(bytes_to_unicode().values()))}
    for left, right in TOY_MERGES:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "vocab.bpe"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in TOY_MERGES))
    return str(folder)


def local_tiktoken(folder):
    """tiktoken's GPT-2 encoding built from `folder/encoder.json`, never from the network.

    tiktoken ranks raw byte strings; GPT-2's ids are those ranks, so each encoder.json key is
    turned back into its bytes (through the inverse of `bytes_to_unicode`) and keeps its id.
    """
    import tiktoken

    from encoder import bytes_to_unicode

    with open(os.path.join(folder, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    byte_of = {symbol: byte for byte, symbol in bytes_to_unicode().items()}
    eot = vocab.pop("<|endoftext|>")
    ranks = {bytes(byte_of[c] for c in symbol): i for symbol, i in vocab.items()}
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": eot})
