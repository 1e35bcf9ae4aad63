"""Everything `finetune` drives: text to token windows, the compiled step, and the run folder's history.

This stage owns turning datasets into tokens (`dataset.py`, `token_cache.py`, `encoding.py`), the
training loop and its printed lines (`train.py`), the compiled step and loss (`step.py`), the
update rules (`optimizer.py`), devices (`distribute.py`), where a run starts and what an
exact-resume save holds (`resume.py`), and a random-weight model to train from scratch
(`scratch.py`). The weight files themselves are `formats/`'s; training samples are drawn with
`generation/`'s sampler through the session.
"""
