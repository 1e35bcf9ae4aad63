"""Text out: the compiled decoding loop, gpt-2-simple's `generate`, and the sampler saved for serving.

This stage owns drawing tokens (`sample.py`: the key/value-cache loop, top-k/top-p, seeded
draws), gpt-2-simple's `load_gpt2`/`generate`/`generate_to_file` (`generate.py`), and a
SavedModel whose signature is that same loop (`saved_model.py`). It loads weights through
`formats/` and never trains.
"""
