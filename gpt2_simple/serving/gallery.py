"""The server's gallery of a run: training samples by step, loss curves, fresh samples with copy marks, stars.

This module owns the `/gallery` view and its JSON routes, which `serve.py` adds to a run's app:
`GET /gallery` (the page, `web/gallery.html`), `GET /gallery/data` (the run's training samples
`samples/<run>/samples-N` by step, its loss, avg_loss and val_loss curves read from the event files
in the run folder, and the starred samples), `POST /gallery/generate` (n fresh samples drawn
through the batcher like any completion, each with its copy mark from the session's copy index,
the copied span's characters to highlight, and its mean log-probability under the model;
`copy_threshold` drops those sharing that many tokens), `POST /gallery/star` (keep or drop a
sample) and `GET /gallery/export?format=text|jsonl`. Stars live in the run folder as
`stars.jsonl`, rewritten atomically on each change, so a reload or a second browser sees them.
The OpenAI routes are `routes.py`'s; the copy index is `copies.py`'s.
"""
import asyncio
import glob
import json
import os
import re
import threading
from importlib import resources

from ..atomic import write_text
from ..formats.run_record import read_curves
from . import openai_api as api
from .answers import Run
from .http import error_response, read_json

STARS_FILE = "stars.jsonl"
SAMPLE_HEADER = re.compile(r"^======== SAMPLE \d+ ========\n", re.M)


def read_samples(folder):
    """[{"step": N, "texts": [...]}] of the `samples-N` files in `folder`, by step."""
    found = []
    for path in glob.glob(os.path.join(folder, "samples-*")):
        match = re.search(r"samples-(\d+)$", path)
        if match:
            with open(path, encoding="utf-8", errors="replace") as f:
                texts = [t.strip("\n") for t in SAMPLE_HEADER.split(f.read()) if t.strip()]
            found.append({"step": int(match.group(1)), "texts": texts})
    return sorted(found, key=lambda s: s["step"])


class Stars:
    """The run's starred samples, one JSON object a line in `stars.jsonl`, changed under a lock."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, STARS_FILE)
        self.lock = threading.Lock()

    def read(self):
        if not os.path.isfile(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def change(self, sample, keep):
        """Star `sample` (a dict with "text") or, with `keep` False, unstar every sample of its text."""
        with self.lock:
            stars = [s for s in self.read() if s["text"] != sample["text"]]
            if keep:
                stars.append(sample)
            write_text(self.path, "".join(json.dumps(s) + "\n" for s in stars))
            return stars

    def export(self, kind):
        stars = self.read()
        if kind == "jsonl":
            return "".join(json.dumps(s) + "\n" for s in stars)
        return "".join(s["text"] + "\n" + "=" * 20 + "\n" for s in stars)


class Gallery:
    """The gallery's state for one served run: its folder, its training samples' folder and its stars."""

    def __init__(self, run_dir, sample_dir=None):
        self.run_dir = run_dir
        self.run_name = os.path.basename(os.path.normpath(run_dir or ""))
        # finetune's default: samples/<run> beside checkpoint/<run>, from where it ran
        beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(run_dir))), "samples")
        folders = [os.path.join(d, self.run_name) for d in ([sample_dir] if sample_dir else ["samples", beside])]
        self.sample_dir = next((f for f in folders if os.path.isdir(f)), folders[0])
        self.stars = Stars(run_dir)

    def data(self):
        return {"run": self.run_name, "samples": read_samples(self.sample_dir), "curves": read_curves(self.run_dir),
                "stars": self.stars.read()}


def completion_request(body, served):
    """The gallery's body -> the `openai_api.Completion` the batcher runs, checked as completions are.

    The gallery's own defaults (4 samples of 60 tokens, temperature 0.9, top_k 40) fill what the
    body leaves out; each sample starts after end-of-text, from the prompt's last tokens that fit.
    """
    if not isinstance(body, dict):
        raise api.APIError(400, "the body must be a JSON object such as {\"n\": 4}")
    enc, n_ctx = served.enc, served.n_ctx
    length = api.number(body, "length", 60, 1, served.max_tokens, integer=True)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise api.APIError(400, f"prompt must be text, got {prompt!r:.40}", "prompt")
    context = ([enc.eot_token] + enc.encode(prompt))[-max(1, min(n_ctx // 2, n_ctx - length)):]
    fields = {"n": body.get("n", 4), "max_tokens": length, "temperature": body.get("temperature", 0.9),
              "top_k": body.get("top_k", 40), "top_p": body.get("top_p"), "seed": body.get("seed"), "logprobs": 0}
    return api.parse_completion(dict(fields, prompt=context), enc, n_ctx, max_tokens=served.max_tokens)


def samples_of(run, index, eot):
    """The gallery's samples of a finished `answers.Run`: text, tokens, mean log-probability and copy mark."""
    prompt, samples = len(run.req.contexts[0]), []
    for i, text in enumerate(run.texts):
        scores = run.scores[i].tail(prompt)
        drawn, logprobs = list(scores.tokens), list(scores.logprobs)
        if drawn and drawn[-1] == eot:  # the token that ended the sample is not part of it
            drawn, logprobs = drawn[:-1], logprobs[:-1]
        sample = {"text": text, "tokens": len(drawn), "logprob": float(sum(logprobs) / len(logprobs)) if drawn else 0.0,
                  "mark": None, "span": None, "longest": 0}
        if index is not None:
            copy = index.check(drawn)
            sample["mark"], sample["longest"] = copy.mark(), copy.longest
            if copy.longest:
                sample["span"] = [len(run.enc.decode(drawn[:copy.start])),
                                  len(run.enc.decode(drawn[:copy.start + copy.longest]))]
        samples.append(sample)
    return samples


def _gallery(request):
    """The gallery of the run `?model=NAME` names (the first run named without it), made once a run."""
    from starlette.exceptions import HTTPException

    from .routes import served_by_query

    try:
        folder = served_by_query(request).sess.folder
    except api.APIError as e:
        raise HTTPException(e.status, e.message) from None
    galleries = request.app.state.galleries
    if folder not in galleries:
        galleries[folder] = Gallery(folder)
    return galleries[folder]


async def page(request):
    from starlette.responses import HTMLResponse

    return HTMLResponse(resources.files(__package__).joinpath("web/gallery.html").read_text(encoding="utf-8"))


async def data(request):
    from starlette.responses import JSONResponse

    return JSONResponse(await asyncio.to_thread(_gallery(request).data))


async def generate(request):
    """n fresh samples through the batcher (its queue, metrics and cancellation), each with its copy mark."""
    from starlette.responses import JSONResponse, Response

    from .routes import collected, served_by_query

    try:
        served = served_by_query(request)
        body = await read_json(request, served.max_body)
        req = completion_request(body, served)
        threshold = api.number(body, "copy_threshold", None, 0, 1 << 20, integer=True) or None
        run = Run(served.batcher, req, asyncio.get_running_loop(), served.enc, served.metrics, adapter=served.adapter,
                  model=served.name)
        if await collected(request, run) is None:
            return Response(status_code=499)  # the client left
        index, note = await _copy_index(served)
    except api.APIError as e:
        return error_response(e)
    samples = samples_of(run, index, served.enc.eot_token)
    kept = [s for s in samples if threshold is None or s["longest"] < threshold]  # copy_threshold drops copies
    return JSONResponse({"samples": kept, "dropped": len(samples) - len(kept), "copies": None if index else note})


async def _copy_index(served):
    """(the run's copy index, None), or (None, why there is none): the gallery shows samples either way."""
    try:
        return await served.built("check_copies", served.sess.copy_index), None
    except api.APIError as e:
        return None, e.message


async def star(request):
    from starlette.responses import JSONResponse

    try:
        body = await read_json(request, request.app.state.catalog.default.max_body)
    except api.APIError as e:
        return error_response(e)
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return error_response(api.APIError(400, "a star needs the sample's \"text\""))
    sample = {k: body[k] for k in ("text", "mark", "span", "logprob", "step") if k in body}
    stars = await asyncio.to_thread(_gallery(request).stars.change, sample, body.get("star", True))
    return JSONResponse({"stars": stars})


async def export(request):
    from starlette.responses import Response

    kind = request.query_params.get("format", "text")
    if kind not in ("text", "jsonl"):
        return error_response(api.APIError(400, f"format={kind!r} must be 'text' or 'jsonl'"))
    gallery = _gallery(request)
    name = f"{gallery.run_name}-stars.{'jsonl' if kind == 'jsonl' else 'txt'}"
    return Response(gallery.stars.export(kind), media_type="application/x-ndjson" if kind == "jsonl" else
                    "text/plain; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'})


# (path, handler, methods): the gallery's routes, added to the app for a run.
ROUTES = (
    ("/gallery", page, ("GET",)),
    ("/gallery/data", data, ("GET",)),
    ("/gallery/generate", generate, ("POST",)),
    ("/gallery/star", star, ("POST",)),
    ("/gallery/export", export, ("GET",)),
)
