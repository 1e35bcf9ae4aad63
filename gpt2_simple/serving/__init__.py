"""Serving: a model over HTTP in OpenAI's shapes, many requests batched on one model thread.

This stage owns the server and nothing about drawing tokens: running it (`serve.py`: the app
built from the routes, Uvicorn, a clean exit), what each path answers (`routes.py`, over a
`Served` state a model), the plumbing every route shares (`http.py`: the optional Starlette/Uvicorn
stack, bounded JSON bodies, errors, the API key), the JSON contracts (`openai_api.py` for
completions, `openai_chat.py` for chat and its template, `openai_responses.py` for the Responses
API, `tokenizer_api.py` for the tokenizer routes), a request's jobs, events and streams (`answers.py`), the model's worker thread with its
queue and continuous batching (`batcher.py`), the runs one server holds and the model each
request names (`catalog.py`: LoRA runs over one shared base), the Prometheus metrics (`metrics.py`), the page in
`web/`, and a run's gallery (`gallery.py`). It imports `model`, `formats` and `generation`;
nothing below imports it.
"""
