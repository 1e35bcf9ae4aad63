"""Text out: the compiled decoding loop and gpt-2-simple's `generate`, `generate_to_file` and `generate_stream`.

This stage owns drawing tokens (`sample.py`: the key/value-cache loop, stop sequences;
`decoding.py`: a call's rows between chunks; `joining.py`: rows joining a running call;
`draws.py`: top-k/top-p/min_p, the penalties and logit bias, seeded draws; `options.py`: the
`SamplingOptions` carried to the loops, whose ranges are `ranges.py`'s one table), one generate
call prepared and its text settled (`call.py`), gpt-2-simple's
`load_gpt2`/`generate`/`generate_to_file` (`generate.py`) with stop strings (`stop_strings.py`),
text as it is drawn (`stream.py`), scores of token sequences (`scores.py`), what a sample shares
with the training text (`copies.py`, and the in-loop guard's graph function in `copy_guard.py`),
and a SavedModel whose signature is that same loop (`saved_model.py`). It loads weights through
`formats/` and never trains; the HTTP server above it is `serving/`'s.
"""
