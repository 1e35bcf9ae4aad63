"""The network and its configuration: GPT-2's math, its size, and the names of its folders.

This stage owns `GPT2` (`model.py`: embeddings, blocks, attention with a key/value cache, the
tied output layer), `HParams` and the presets (`hparams.py`), and the rules that turn a model or
run name into a folder (`names.py`). It reads and writes no weights (that is `formats/`), trains
nothing (`training/`) and samples nothing (`generation/`); it imports no other stage.
"""
