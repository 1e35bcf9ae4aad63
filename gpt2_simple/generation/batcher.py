"""The server's model worker: one thread that owns the sampler, a bounded queue, and batching.

This module owns running requests on the model one batch at a time. Requests (`Job`s) wait in
a bounded queue (`QueueFull` when it is full: the server answers 503); the worker thread takes
the oldest and every waiting job that can share its batch, up to `max_rows` rows. Jobs share a
batch whatever their options, seeds and prompt lengths (prompts are left-padded and masked, each
row carries its own options and seed), so each row draws what it would alone: a seeded row
equals `generate(seed=...)`'s. Only the copy guard is one a batch, and prompts of different lengths
share a batch only while every row fits in the context (no sliding window). Each row's text is settled
by a `stream.TextStream`, and pieces are handed to the job's `emit` callback as the compiled
chunks return. A cancelled job leaves the queue at once, or ends its rows at the next chunk;
`stop()` cancels everything and ends the thread. HTTP is `serve.py`'s.
"""
import collections
import dataclasses
import logging
import threading

import numpy as np

from .draws import batch_seed, row_seeds
from .options import SamplingOptions
from .scores import covered
from .stop_strings import StopStrings
from .stream import TextStream

CHUNK = 4  # tokens per compiled call: how often pieces arrive and cancellation is noticed
LOG = logging.getLogger("gpt2_simple.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


@dataclasses.dataclass(frozen=True)
class Options:
    """The sampling options of a job (its rows' own, in a batch of any options)."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple = ()  # ((token id, bias), ...): a tuple, so equal options hash equal
    min_p: float = 0.0
    avoid_copies: int = 0  # the copy guard's N (0: off); the job carries the guard's index

    def sampling(self, stop_tokens):
        """The sampler's `SamplingOptions`, with the stop strings' token sequences."""
        return SamplingOptions(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias,
            stop_tokens=tuple(tuple(seq) for seq in stop_tokens), avoid_copies=self.avoid_copies)


@dataclasses.dataclass(eq=False)
class Job:
    """One prompt of a request, sampled `n` times.

    `emit(event)` is called from the worker thread with ("text", row, piece), ("done", row,
    finish_reason, completion_tokens, scores) or ("error", message). `scores` is None unless
    `scored`: then it is the `scores.Scores` of the prompt and the drawn tokens the text shows.
    """

    tokens: list
    n: int
    options: Options
    emit: object
    seed: int = None
    scored: bool = False
    guard: object = None  # the `copy_guard.GuardIndex` of `options.avoid_copies` tokens, or None
    cancelled: bool = False

    def group(self):
        """Jobs share a batch only within a group: one copy guard a batch (it carries its N), and scoring-only jobs apart."""
        return self.guard, self.options.max_tokens == 0


class Batcher:
    """The worker thread and its queue. Thread-safe: `submit` and `cancel` come from the server."""

    def __init__(self, sampler, encoder, *, max_queue=64, max_rows=16, scorer=None):
        self.sampler, self.encoder, self.scorer = sampler, encoder, scorer
        self.max_queue, self.max_rows = max_queue, max_rows
        self.n_ctx = sampler.model.hparams.n_ctx
        self._waiting = collections.deque()
        self._running = []
        self._lock = threading.Condition()
        self._stopping = False
        self.batches = self.rows = self.tokens = 0  # run so far (batching shows as rows > batches)
        self._thread = threading.Thread(target=self._work, name="gpt2_simple-model", daemon=True)

    def start(self):
        self._thread.start()
        return self

    @property
    def queued(self):
        return len(self._waiting)

    @property
    def running(self):
        return sum(job.n for job in self._running)

    def submit(self, job):
        """Queue `job`. Raises QueueFull (or RuntimeError once stopping)."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(job)
            self._lock.notify()

    def cancel(self, job):
        """The client has gone: drop `job` from the queue now, or end its rows at the next chunk."""
        with self._lock:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)

    def stop(self, timeout=30):
        """Refuse new jobs, cancel waiting and running ones, and end the thread."""
        with self._lock:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._lock.notify_all()
        for job in waiting:
            job.emit(("error", "the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -----------------------------------------------------------------------------------------
    # The worker thread

    def _work(self):
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                self._running = self._take()
                self.batches, self.rows = self.batches + 1, self.rows + sum(job.n for job in self._running)
            try:
                self._run(self._running)
            except Exception as e:  # a failure of the model must not end the worker
                LOG.exception("generation failed")
                for job in self._running:
                    job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
            finally:
                with self._lock:
                    self._running = []

    def _take(self):
        """The oldest job and the waiting jobs that can share its batch (called under the lock)."""
        batch = [self._waiting.popleft()]
        rows = batch[0].n
        for job in list(self._waiting):
            if rows + job.n <= self.max_rows and self._can_share(batch + [job]):
                self._waiting.remove(job)
                batch.append(job)
                rows += job.n
        return batch

    def _can_share(self, jobs):
        """Whether `jobs` decode as one batch with each row drawing what it would alone.

        Left-padded rows slide their window when the longest row's does (`Sampler._slide`), so
        prompts of different lengths share only when no row's text outgrows the context.
        """
        if len({job.group() for job in jobs}) > 1:
            return False
        lengths = {len(job.tokens) for job in jobs}
        return len(lengths) == 1 or max(lengths) + max(job.options.max_tokens for job in jobs) <= self.n_ctx

    def _run(self, jobs):
        """Sample every row of `jobs` in one batch, emitting pieces as chunks return; then score the rows that ask."""
        rows = [(job, i) for job in jobs for i in range(job.n)]
        stops = {job: StopStrings(list(job.options.stop)) for job in jobs}
        texts = [TextStream(self.encoder, job.tokens, stops=stops[job], lstrip=False) for job, _ in rows]
        drawn = [[] for _ in rows]
        done = [False] * len(rows)
        scored = []  # (row, finish_reason): their "done" waits for the scoring pass

        def finish(r, reason):
            done[r] = True
            job, i = rows[r]
            if job.scored:
                scored.append((r, reason))
            else:
                job.emit(("done", i, reason, len(drawn[r]), None))

        def end(r):  # the row's max_tokens are drawn, or the batch has ended
            piece = texts[r].finish()
            if piece:
                rows[r][0].emit(("text", rows[r][1], piece))
            finish(r, "stop" if texts[r].ended else "length")

        for tokens in self._chunks(jobs, rows, stops, done):
            self.tokens += tokens.shape[1]
            for r, (job, i) in enumerate(rows):
                if done[r] or job.cancelled:
                    continue
                new = tokens[r][:job.options.max_tokens - len(drawn[r])]  # a row may want fewer than the batch
                piece = texts[r].feed(new)
                drawn[r] += new.tolist()
                if piece:
                    job.emit(("text", i, piece))
                if texts[r].ended:
                    finish(r, "stop")
                elif len(drawn[r]) == job.options.max_tokens:
                    end(r)
        for r, (job, _) in enumerate(rows):
            if not done[r] and not job.cancelled:
                end(r)
        self._score(rows, scored, texts, drawn)

    def _chunks(self, jobs, rows, stops, done):
        """The sampler's chunks for `rows`, each with its job's options and seed (none when every
        `max_tokens` is 0: the prompts are only scored)."""
        length = max(job.options.max_tokens for job in jobs)
        if length == 0:
            return

        # XLA compiles a program for each batch size: up to its largest, a batch is filled to the
        # next power of two with one-token rows that have ended, so that traffic meets 5 sizes, not 16.
        size = len(rows) if len(rows) > self.sampler.xla_max_batch else 1 << (len(rows) - 1).bit_length()
        fillers = size - len(rows)

        def ended(_):
            return [d or job.cancelled or self._stopping for d, (job, _) in zip(done, rows)] + [True] * fillers

        sampling = [job.options.sampling(stops[job].tokens(self.encoder)) for job in jobs]
        # A seeded job's rows draw what generate(seed=...)'s first batch draws; an unseeded job gets a fresh seed.
        seeds = np.concatenate([row_seeds(batch_seed(job.seed), job.n) for job in jobs] + [row_seeds(0, fillers)])
        yield from self.sampler.chunks(
            [job.tokens for job, _ in rows] + [[self.encoder.eot_token]] * fillers, length, seed=seeds, chunk=CHUNK,
            stop=ended, options=[o for job, o in zip(jobs, sampling) for _ in range(job.n)] + sampling[:1] * fillers,
            guard=jobs[0].guard)

    def _score(self, rows, scored, texts, drawn):
        """One forward pass over the finished rows that asked for scores, then their "done" events."""
        scored = [(r, reason) for r, reason in scored if not rows[r][0].cancelled]
        if not scored:
            return
        sequences = []
        for r, reason in scored:
            shown = covered(self.encoder, drawn[r], texts[r].text, reason == "stop")
            sequences.append(rows[r][0].tokens + drawn[r][:shown])
        for (r, reason), scores in zip(scored, self.scorer.score(sequences)):
            job, i = rows[r]
            job.emit(("done", i, reason, len(drawn[r]), scores))
