"""GPT-2's byte-level BPE encoder, byte-exact with OpenAI's.

    from encoder import get_encoder
    enc = get_encoder("models/124M")
    enc.encode("Hello world")   # [15496, 995]
    enc.decode([15496, 995])    # 'Hello world'
"""
from .bpe import ENDOFTEXT, PATTERN, Encoder, bytes_to_unicode
from .files import encode_file
from .vocab import get_encoder, read_vocab

__all__ = ["ENDOFTEXT", "PATTERN", "Encoder", "bytes_to_unicode", "encode_file", "get_encoder", "read_vocab"]
