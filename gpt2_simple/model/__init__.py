"""The network and its configuration: GPT-2's math, its size, its adapters, and the names of its folders.

This stage owns `GPT2` (`model.py`: embeddings, blocks, attention with a key/value cache, the
tied output layer; `ops.py`: masked attention and GELU, whose backward passes recompute rather
than keep; `columns.py`: the same decoding step in XLA's faster orientation), each
token's log-probability under it (`logprobs.py`: every score's one computation), `HParams`,
the presets and the token-id check (`hparams.py`), low-rank
adapters over a frozen, possibly 16-bit base (`lora.py`: enable, merge), many runs' adapters
over one base chosen per row (`adapter_rows.py`: the server's mixed batches), and the rules that turn
a model, run or sample name into a folder (`names.py`). It reads and writes no weights (that is
`formats/`), trains nothing (`training/`) and samples nothing (`generation/`); it imports no
other stage.
"""
