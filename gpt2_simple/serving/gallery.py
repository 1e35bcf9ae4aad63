"""The server's gallery of a run: training samples by step, loss curves, fresh samples with copy marks, stars.

This module owns the `/gallery` view and its JSON routes, added to `serve.py`'s app:
`GET /gallery` (the page, `web/gallery.html`), `GET /gallery/data` (the run's training samples
`samples/<run>/samples-N` by step, its loss, avg_loss and val_loss curves read from the event files
in the run folder, and the starred samples), `POST /gallery/generate` (n fresh samples, each with
its copy mark from the session's copy index, the copied span's characters to highlight, and its
mean log-probability under the model; `copy_threshold` drops those sharing that many tokens), `POST /gallery/star` (keep or drop a sample) and
`GET /gallery/export?format=text|jsonl`. Stars live in the run folder as `stars.jsonl`, rewritten
atomically on each change, so a reload or a second browser sees them. The OpenAI routes, the API
key and the batcher are `serve.py`'s; the copy index is `copies.py`'s.
"""
import glob
import json
import os
import re
import threading

import numpy as np
import tensorflow as tf

from ..atomic import write_text
from . import openai_api as api

STARS_FILE = "stars.jsonl"
SAMPLE_HEADER = re.compile(r"^======== SAMPLE \d+ ========\n", re.M)
CURVES = ("loss", "avg_loss", "val_loss")
MAX_SAMPLES = 16


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


def read_curves(run_dir):
    """{tag: [[step, value], ...]} of the run's scalar events (`loss`, `avg_loss`, `val_loss`), by step."""
    curves = {tag: {} for tag in CURVES}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag in curves:
                        number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                        curves[value.tag][int(event.step)] = number  # a resumed run's later value wins
        except tf.errors.DataLossError:  # a file still being written: what was read so far
            continue
    return {tag: sorted([s, v] for s, v in points.items()) for tag, points in curves.items()}


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


def mean_logprob_function(model):
    """`score(tokens [1, seq], start)`: the mean log-probability of `tokens[start:]` given what comes before."""

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32), tf.TensorSpec([], tf.int32)])
    def score(tokens, start):
        logp = tf.nn.log_softmax(model.forward(tokens)[0][:, :-1])  # [1, seq - 1, n_vocab]
        picked = tf.gather(logp, tokens[:, 1:], batch_dims=2)[0]  # [seq - 1]: each next token's
        return tf.reduce_mean(picked[start - 1:])

    return score


class Gallery:
    """The gallery's state for one served session: the run folder, stars, the scoring function."""

    def __init__(self, sess, sample_dir=None):
        self.sess = sess
        self.run_dir = sess.folder
        self.run_name = os.path.basename(os.path.normpath(sess.folder or ""))
        # finetune's default: samples/<run> beside checkpoint/<run>, from where it ran
        beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(self.run_dir))), "samples")
        folders = [os.path.join(d, self.run_name) for d in ([sample_dir] if sample_dir else ["samples", beside])]
        self.sample_dir = next((f for f in folders if os.path.isdir(f)), folders[0])
        self.stars = Stars(sess.folder)
        self.score = mean_logprob_function(sess.model)
        self.lock = threading.Lock()  # one generate at a time beside the batcher's thread

    def data(self):
        return {"run": self.run_name, "samples": read_samples(self.sample_dir), "curves": read_curves(self.run_dir),
                "stars": self.stars.read()}

    def generate(self, body):
        """n fresh samples from the request's options, each with its copy mark and mean log-probability."""
        n = _int(body, "n", 4, 1, MAX_SAMPLES)
        length = _int(body, "length", 60, 1, 1024)
        temperature = float(body.get("temperature", 0.9))
        if not temperature > 0:
            raise api.APIError(400, f"temperature={temperature!r} must be > 0")
        enc, sess = self.sess.encoder, self.sess
        context = [enc.eot_token] + enc.encode(str(body.get("prompt") or ""))
        context = context[-(sess.model.hparams.n_ctx // 2):]
        try:
            index = sess.copy_index()
        except (FileNotFoundError, ValueError) as e:
            index, note = None, str(e)
        with self.lock:
            rows = sess.sampler.sample(np.tile(np.asarray(context, np.int32), (n, 1)), length,
                                       temperature=temperature, top_k=40, seed=body.get("seed"))
            samples = [self._sample(context, list(row), index) for row in rows]
        threshold = _int(body, "copy_threshold", 0, 0, 1 << 20) if body.get("copy_threshold") else None
        kept = [s for s in samples if threshold is None or s["longest"] < threshold]  # copy_threshold drops copies
        return {"samples": kept, "dropped": len(samples) - len(kept), "copies": None if index else note}

    def _sample(self, context, row, index):
        enc = self.sess.encoder
        if enc.eot_token in row:
            row = row[:row.index(enc.eot_token)]
        text = enc.decode(row)
        window = (context + row)[-self.sess.model.hparams.n_ctx:]
        start = len(window) - len(row)
        logprob = float(self.score(tf.constant([window], tf.int32), tf.constant(start, tf.int32))) if row else 0.0
        sample = {"text": text, "tokens": len(row), "logprob": logprob, "mark": None, "span": None, "longest": 0}
        if index is not None:
            copy = index.check(row)
            sample["mark"], sample["longest"] = copy.mark(), copy.longest
            if copy.longest:
                sample["span"] = [len(enc.decode(row[:copy.start])), len(enc.decode(row[:copy.start + copy.longest]))]
        return sample


def _int(body, name, default, low, high):
    value = body.get(name, default)
    if not (isinstance(value, int) and low <= value <= high):
        raise api.APIError(400, f"{name}={value!r} must be an integer in [{low}, {high}]")
    return value


def routes(sess, read_json):
    """The gallery's Starlette routes for `sess`; `read_json(request)` reads a bounded JSON body."""
    import asyncio
    from importlib import resources

    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    gallery = Gallery(sess)

    async def page(request):
        return HTMLResponse(resources.files(__package__).joinpath("web/gallery.html").read_text(encoding="utf-8"))

    async def data(request):
        return JSONResponse(await asyncio.to_thread(gallery.data))

    async def generate(request):
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise api.APIError(400, "the body must be a JSON object such as {\"n\": 4}")
            return JSONResponse(await asyncio.to_thread(gallery.generate, body))
        except api.APIError as e:
            return JSONResponse(e.body(), status_code=e.status)

    async def star(request):
        try:
            body = await read_json(request)
        except api.APIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return JSONResponse(api.APIError(400, "a star needs the sample's \"text\"").body(), status_code=400)
        sample = {k: body[k] for k in ("text", "mark", "span", "logprob", "step") if k in body}
        return JSONResponse({"stars": await asyncio.to_thread(gallery.stars.change, sample, body.get("star", True))})

    async def export(request):
        kind = request.query_params.get("format", "text")
        if kind not in ("text", "jsonl"):
            return JSONResponse(api.APIError(400, f"format={kind!r} must be 'text' or 'jsonl'").body(), status_code=400)
        name = f"{gallery.run_name}-stars.{'jsonl' if kind == 'jsonl' else 'txt'}"
        return Response(gallery.stars.export(kind), media_type="application/x-ndjson" if kind == "jsonl" else
                        "text/plain; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return [Route("/gallery", page), Route("/gallery/data", data),
            Route("/gallery/generate", generate, methods=["POST"]), Route("/gallery/star", star, methods=["POST"]),
            Route("/gallery/export", export)]
