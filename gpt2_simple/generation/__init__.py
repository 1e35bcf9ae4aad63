"""Text out: the compiled decoding loop, gpt-2-simple's `generate`, streaming, and serving.

This stage owns drawing tokens (`sample.py`: the key/value-cache loop, stop sequences;
`decoding.py`: a call's rows between chunks, and rows joining it;
`draws.py`: top-k/top-p/min_p, the penalties and logit bias, seeded draws; `options.py`: the
`SamplingOptions` carried to the loops), gpt-2-simple's
`load_gpt2`/`generate`/`generate_to_file` (`generate.py`) with stop strings (`stop_strings.py`),
text as it is drawn (`stream.py`), scores of token sequences (`scores.py`), an OpenAI-compatible
HTTP server (`serve.py`, with its model thread in `batcher.py`, its JSON contracts in
`openai_api.py`, `openai_chat.py` and `tokenizer_api.py`, a request's events in `answers.py`,
its metrics in `metrics.py`, its page in `web/` and a run's gallery in `gallery.py`), what a
sample shares with the training text (`copies.py`, and the in-loop guard's graph function in
`copy_guard.py`), and a SavedModel whose signature is that same loop (`saved_model.py`). It loads weights through
`formats/` and never trains.
"""
