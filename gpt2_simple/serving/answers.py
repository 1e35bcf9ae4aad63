"""A request's life in the batcher: its jobs, the events they send back, and the answers they make.

This module owns turning a checked request (`openai_api.Completion`) into `batcher.Job`s, carrying
their events from the worker thread to the event loop, gathering a whole answer (texts, finish
reasons, token counts, scores, copy marks) or streaming it as Server-Sent Events (completions' and
chat's shapes, with a usage chunk when asked), and cancelling the jobs of a client that has gone.
Routes are `routes.py`'s; the copy index is `copies.py`'s.
"""
import asyncio
import json
import time

from ..model.adapter_rows import BASE
from . import openai_api as api
from . import openai_chat as chat_api
from .batcher import Job, QueueFull


async def disconnected(receive):
    while (await receive())["type"] != "http.disconnect":
        pass


class Run:
    """One request's jobs in the batcher, and the events they send back to the event loop."""

    def __init__(self, batcher, req, loop, enc, metrics, copies=None, guard=None, *, adapter=BASE, model=""):
        """`copies`: the run's `copies.CopyIndex` when the request asked for `check_copies`, else None;
        `guard`: the `copy_guard.GuardIndex` of its `avoid_copies`, else None; `adapter`: (slot, scale) of its
        LoRA run; `model`: the name its metrics are counted under."""
        self.batcher, self.n, self.events, self.req, self.enc = batcher, req.n, asyncio.Queue(), req, enc
        self.metrics, self.start, self.first, self.copies = metrics, time.perf_counter(), True, copies
        self.rows = len(req.prompts) * req.n
        self.texts = [""] * self.rows  # each choice's completion (no echo), for its copy mark
        self.counts = [0] * self.rows
        self.scores = [None] * self.rows
        self.jobs = [Job(tokens=t, n=req.n, options=req.options, max_tokens=req.max_tokens, stops=req.stops,
                         seed=req.seed, emit=self._emitter(loop, p),
                         scored=req.logprobs is not None, guard=guard, adapter=adapter)
                     for p, t in enumerate(req.contexts)]
        try:
            for job in self.jobs:
                batcher.submit(job)
        except (QueueFull, RuntimeError) as e:
            self.cancel()
            raise api.APIError(503, f"the server is busy ({e}); retry shortly", kind="server_busy",
                               headers={"Retry-After": "1"}) from None
        self.model = model
        metrics.prompt_tokens.labels(model).inc(self.prompt_tokens)

    def _emitter(self, loop, prompt):
        def emit(event):
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, (prompt, event))
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass

        return emit

    def cancel(self):
        for job in self.jobs:
            self.batcher.cancel(job)

    async def next_events(self):
        """Yield (choice index, kind, value, ...) until every row is done; raises APIError on a failure."""
        left = self.rows
        while left:
            prompt, event = await self.events.get()
            if event[0] == "error":
                self.cancel()
                busy = "shutting down" in event[1]
                raise api.APIError(503 if busy else 500, event[1], kind="server_error")
            index = prompt * self.n + event[1]
            if self.first:
                self.first = False
                self.metrics.first_token.labels(self.model).observe(time.perf_counter() - self.start)
            if event[0] == "text":
                self.texts[index] += event[2]
            if event[0] == "done":
                left -= 1
                self.counts[index], self.scores[index] = event[3], event[4]
                self.metrics.completion_tokens.labels(self.model).inc(event[3])
                if event[2] == "abort":
                    self.metrics.aborted_rows.labels(self.model).inc()
            yield index, event[0], event[2]

    @property
    def prompt_tokens(self):
        return sum(len(t) for t in self.req.prompts)

    def echoed(self, index):
        """The prompt's text when the request asked for `echo` ('' otherwise)."""
        return self.enc.decode(self.req.prompts[index // self.n]) if self.req.echo else ""

    def logprobs(self, index):
        """OpenAI's `logprobs` object of a finished choice, or None when not asked for."""
        scores = self.scores[index]
        if scores is None:
            return None
        prompt, context = (len(p[index // self.n]) for p in (self.req.prompts, self.req.contexts))
        if self.req.chat:
            return chat_api.chat_logprobs(self.enc, scores, self.req.logprobs, context)
        return api.logprobs_object(self.enc, scores.tail(context - prompt), self.req.logprobs, prompt, self.req.echo)

    def copy(self, index):
        """The `copy_mark` of a finished choice (`copies.Copy.to_dict()` of its completion), or None."""
        return None if self.copies is None else self.copies.check(self.enc.encode(self.texts[index])).to_dict()

    def marked(self, answer):
        """A whole answer with each choice's `copy_mark`; choices at `copy_threshold` or over are dropped.

        The kept choices keep their `index`, and `copies_dropped` counts the others.
        """
        if self.copies is None:
            return answer
        threshold, kept = self.req.copy_threshold, []
        for choice in answer["choices"]:
            choice["copy_mark"] = self.copy(choice["index"])
            if threshold is None or choice["copy_mark"]["longest"] < threshold:
                kept.append(choice)
        return dict(answer, choices=kept, copies_dropped=len(answer["choices"]) - len(kept))

    async def collect(self):
        texts, reasons = [self.echoed(i) for i in range(self.rows)], [None] * self.rows
        async for index, kind, value in self.next_events():
            if kind == "text":
                texts[index] += value
            else:
                reasons[index] = value
        return [(text, reason, self.logprobs(i)) for i, (text, reason) in enumerate(zip(texts, reasons))]


def completion_events(run, cid, name):
    """The Server-Sent Events of a streaming completion: echoed prompts first; a choice's scores come with its end."""
    def shape(index, kind, value):
        if kind == "echo":
            return api.chunk(cid, name, index, value)
        text, reason = (value, None) if kind == "text" else ("", value)
        return _last(run, index, kind, api.chunk(cid, name, index, text, reason,
                                                 run.logprobs(index) if kind == "done" else None))

    return _stream(run, shape, "echo" if run.req.echo else None,
                   lambda: api.usage_chunk(cid, name, "text_completion", run.prompt_tokens, sum(run.counts)))


def chat_events(run, cid, name):
    """The Server-Sent Events of a streaming chat completion: the role first, then content deltas."""
    def shape(index, kind, value):
        if kind == "role":
            return chat_api.chat_chunk(cid, name, index, {"role": "assistant", "content": ""})
        delta, reason = ({"content": value}, None) if kind == "text" else ({}, value)
        return _last(run, index, kind, chat_api.chat_chunk(cid, name, index, delta, reason,
                                                           run.logprobs(index) if kind == "done" else None))

    return _stream(run, shape, "role",
                   lambda: api.usage_chunk(cid, name, "chat.completion.chunk", run.prompt_tokens, sum(run.counts)))


def _last(run, index, kind, chunk):
    """A streamed choice's last chunk (the one with its `finish_reason`) carries its `copy_mark`."""
    if kind == "done" and run.copies is not None:
        chunk["choices"][0]["copy_mark"] = run.copy(index)
    return chunk


async def _stream(run, shape, opening, usage):
    """`shape(index, kind, value)` of each event as `data: {...}`, ending with `data: [DONE]`.

    `opening` (a kind, or None) is one event per choice before any text. With `include_usage`
    every chunk has `"usage": null` and `usage()`, the counts, comes last, as OpenAI sends them. A
    client that goes away cancels the stream: its rows are freed at once.
    """
    finished, counted = False, run.req.include_usage

    def sse(chunk):
        return _sse(dict(chunk, usage=None) if counted else chunk)

    try:
        for index in range(run.rows if opening else 0):
            yield sse(shape(index, opening, run.echoed(index)))
        try:
            async for index, kind, value in run.next_events():
                yield sse(shape(index, kind, value))
            if counted:
                yield _sse(usage())
        except api.APIError as e:
            yield _sse(e.body())
        finished = True
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            run.cancel()


def _sse(obj):
    return f"data: {json.dumps(obj)}\n\n"
