"""The server's model worker: one thread that owns the sampler, a bounded queue, and batching.

This module owns running requests on the model one batch at a time. Requests (`Job`s) wait in
a bounded queue (`QueueFull` when it is full: the server answers 503); the worker thread takes
the oldest and every waiting job that can share its batch, up to `max_rows` rows. Jobs share a
batch whatever their options, seeds and prompt lengths (prompts are left-padded and masked, each
row carries its own options, seed and LoRA adapter), so each row draws what it would alone: a seeded row
equals `generate(seed=...)`'s. Only the copy guard is one a batch, and prompts of different lengths
share a batch only while every row fits in the context (no sliding window). Batching is continuous:
between chunks, waiting jobs of the batch's group take the slots of rows that have ended, or grow
the batch (`Sampler.chunks`' `join`), so a request that arrives mid-batch starts within a chunk
instead of waiting for the batch's longest row. Each row's text is settled
by a `call.TextStream`, and pieces are handed to the job's `emit` callback as the compiled
chunks return. A cancelled job leaves the queue at once, or ends its rows at the next chunk.
`drain()` refuses new jobs while the accepted ones finish; `abort()` ends what is left with
finish_reason "abort"; `stop()` aborts and ends the thread. HTTP is `routes.py`'s.
"""
import collections
import dataclasses
import logging
import threading

import numpy as np

from .. import heap
from ..generation.call import TextStream
from ..generation.decoding import xla_batch
from ..generation.draws import batch_seed, row_seeds
from ..generation.joining import Joining
from ..generation.options import SamplingOptions
from ..generation.scores import covered
from ..generation.stop_strings import StopStrings
from ..model.adapter_rows import BASE

CHUNK = 4  # tokens per compiled call: how often pieces arrive and cancellation is noticed
LOG = logging.getLogger("gpt2_simple.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


@dataclasses.dataclass(eq=False)
class Job:
    """One prompt of a request, sampled `n` times.

    `emit(event)` is called from the worker thread with ("text", row, piece), ("done", row,
    finish_reason, completion_tokens, scores) or ("error", message). `scores` is None unless
    `scored`: then it is the `scores.Scores` of the prompt and the drawn tokens the text shows.
    """

    tokens: list
    n: int
    options: SamplingOptions  # its `stop_tokens` are the token sequences of `stops`
    emit: object
    max_tokens: int = 16
    stops: StopStrings = None  # the text ends before the first of them (None: none)
    seed: int = None
    scored: bool = False
    guard: object = None  # the `copy_guard.GuardIndex` of `options.avoid_copies` tokens, or None
    adapter: tuple = BASE  # (slot, scale) of its LoRA run in the sampler's `AdapterTable` (BASE: none)
    cancelled: bool = False

    def group(self):
        """Jobs share a batch only within a group: one copy guard a batch (it carries its N), and scoring-only jobs apart."""
        return self.guard, self.max_tokens == 0


@dataclasses.dataclass(eq=False)
class _Row:
    """One row of a running batch: its job, which of the job's `n` samples it is, its text and draws."""

    job: Job
    i: int
    text: TextStream
    drawn: list = dataclasses.field(default_factory=list)
    done: bool = False

    @staticmethod
    def live(row):
        """Whether the row in a slot (a `_Row`, or None: a filler) still draws: not done, its job not cancelled."""
        return row is not None and not row.done and not row.job.cancelled


class Batcher:
    """The worker thread and its queue. Thread-safe: `submit` and `cancel` come from the server."""

    def __init__(self, sampler, encoder, *, max_queue=64, max_rows=16, scorer=None):
        self.sampler, self.encoder, self.scorer = sampler, encoder, scorer
        self.max_queue, self.max_rows = max_queue, max_rows
        self.n_ctx = sampler.model.hparams.n_ctx
        self._waiting = collections.deque()
        self._running = []  # the running batch's jobs, joined ones included
        self._slots = []  # its rows, one a slot (`_Row`, or None: a filler)
        self._lock = threading.Condition()
        self._draining = False  # no new jobs; the accepted ones run on
        self._aborting = False  # the rows left end now, with finish_reason "abort"
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
        """Rows of the running batch still drawing (joined ones included, ended ones not)."""
        return sum(map(_Row.live, self._slots))

    @property
    def draining(self):
        return self._draining

    def submit(self, job):
        """Queue `job`. Raises QueueFull (or RuntimeError once draining or stopping)."""
        with self._lock:
            if self._stopping or self._draining:
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

    def drain(self):
        """Refuse new jobs; the waiting and running ones go on (`wait_idle` says when they are done)."""
        with self._lock:
            self._draining = True

    def wait_idle(self, timeout):
        """Wait up to `timeout` seconds until no job waits or runs; whether none does."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._waiting and not self._running, timeout)

    def abort(self):
        """End every job now, honestly: waiting ones and the running rows finish with reason "abort"."""
        with self._lock:
            self._draining = self._aborting = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._lock.notify_all()
        for job in waiting:
            for i in range(job.n):
                job.emit(("done", i, "abort", 0, None))

    def wait_unused(self, slot):
        """Wait until no job of adapter `slot` waits or has rows drawing (an adapter being removed: none can join)."""
        def unused():
            return not any(job.adapter[0] == slot for job in self._waiting) and not any(
                _Row.live(row) and row.job.adapter[0] == slot for row in self._slots)

        with self._lock:
            while not self._lock.wait_for(unused, timeout=0.05):  # rows end without notifying: look again
                pass

    def stop(self, timeout=30):
        """Abort what waits and runs (`abort`), and end the thread."""
        self.abort()
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
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
                if not self._waiting:  # at rest: give back the heap the batch freed (before `running` says idle)
                    heap.trim()
                with self._lock:
                    self._running, self._slots = [], []
                    self._lock.notify_all()  # `wait_idle`

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
        return len(lengths) == 1 or max(lengths) + max(job.max_tokens for job in jobs) <= self.n_ctx

    def _run(self, jobs):
        """Sample every row of `jobs` in one batch, emitting pieces as chunks return, and score the rows that ask as they end.

        Waiting jobs of the batch's group join it between chunks, in the slots of rows that have
        ended (`_join`), so a request arriving mid-batch starts within a chunk, not after the batch.
        """
        self._slots = rows = [self._row(job, i) for job in jobs for i in range(job.n)]  # one a slot; None: a filler
        scored = []  # (row, finish_reason): their "done" waits for the scoring pass

        def finish(row, reason):
            row.done = True
            if row.job.scored:
                scored.append((row, reason))
            else:
                row.job.emit(("done", row.i, reason, len(row.drawn), None))

        def end(row):  # the row's max_tokens are drawn, or the batch has ended
            piece = row.text.finish()
            if piece:
                row.job.emit(("text", row.i, piece))
            cut = self._aborting and len(row.drawn) < row.job.max_tokens  # a shutdown ended it unfinished
            finish(row, "stop" if row.text.ended else "abort" if cut else "length")

        for tokens in self._chunks(jobs, rows):
            self.tokens += tokens.shape[1]
            for slot, row in enumerate(rows):
                if not _Row.live(row):
                    continue
                new = tokens[slot][:row.job.max_tokens - len(row.drawn)]  # a row may want fewer than the batch
                piece = row.text.feed(new)
                row.drawn += new.tolist()
                if piece:
                    row.job.emit(("text", row.i, piece))
                if row.text.ended:
                    finish(row, "stop")
                elif len(row.drawn) == row.job.max_tokens:
                    end(row)
            self._score(scored)  # the rows that ended in this chunk, not at the end of a batch others keep joining
            scored.clear()
        for row in rows:
            if _Row.live(row):
                end(row)
        self._score(scored)

    def _row(self, job, i):
        return _Row(job, i, TextStream(self.encoder, job.tokens, stops=job.stops, lstrip=False))

    def _chunks(self, jobs, rows):
        """The sampler's chunks for `rows`, each with its job's options and seed (none when every
        `max_tokens` is 0: the prompts are only scored); waiting jobs join between chunks."""
        length = max(job.max_tokens for job in jobs)
        if length == 0:
            return

        # A batch is filled to the size XLA compiles for with one-token rows that have ended.
        size = xla_batch(len(rows), self.sampler.xla_max_batch)
        fillers = size - len(rows)
        rows += [None] * fillers

        def ended(out):
            rows.extend([None] * (len(out) - len(rows)))  # the sampler grew the batch for joining rows
            return [not _Row.live(row) or self._aborting for row in rows]

        sampling = [job.options for job in jobs]
        # A seeded job's rows draw what generate(seed=...)'s first batch draws; an unseeded job gets a fresh seed.
        seeds = np.concatenate([row_seeds(batch_seed(job.seed), job.n) for job in jobs] + [row_seeds(0, fillers)])
        yield from self.sampler.chunks(
            [job.tokens for job in jobs for _ in range(job.n)] + [[self.encoder.eot_token]] * fillers, length,
            seed=seeds, chunk=CHUNK, stop=ended, guard=jobs[0].guard, join=lambda slots, fits: self._join(
                jobs[0].group(), rows, slots, fits),
            options=[o for job, o in zip(jobs, sampling) for _ in range(job.n)] + sampling[:1] * fillers,
            adapters=[job.adapter for job in jobs for _ in range(job.n)] + [BASE] * fillers)

    def _join(self, group, rows, slots, fits):
        """Waiting jobs that can join the running batch, in queue order (`Sampler.chunks`' `join`): their rows, for `slots`.

        The first waiting job that cannot join (another group, more rows than are free, or a text
        that would outgrow the context) stops the joining: the batch drains and that job runs next,
        so no job waits forever behind newer ones.
        """
        slots = slots[:self.max_rows - sum(map(_Row.live, rows))]
        joining, taken = [], []
        with self._lock:
            for job in list(self._waiting) if not self._aborting else ():
                if job.group() != group or len(joining) + job.n > len(slots):
                    break
                rows_of_job = [Joining(job.tokens, job.options, tuple(pair), job.max_tokens, job.adapter)
                               for pair in row_seeds(batch_seed(job.seed), job.n)]
                if not fits(joining + rows_of_job):
                    break
                self._waiting.remove(job)
                joining += rows_of_job
                taken += [(job, i) for i in range(job.n)]
            self._running += list(dict.fromkeys(job for job, _ in taken))
            self.rows += len(taken)
        for slot, (job, i) in zip(slots, taken):
            rows.extend([None] * (slot + 1 - len(rows)))
            rows[slot] = self._row(job, i)
        return joining

    def _score(self, scored):
        """One forward pass over the finished rows that asked for scores, then their "done" events."""
        scored = [(row, reason) for row, reason in scored if not row.job.cancelled]
        if not scored:
            return
        sequences = []
        for row, reason in scored:
            shown = covered(self.encoder, row.drawn, row.text.text, reason == "stop")
            sequences.append(row.job.tokens + row.drawn[:shown])
        for (row, reason), scores in zip(scored, self.scorer.score(sequences, [row.job.adapter for row, _ in scored])):
            row.job.emit(("done", row.i, reason, len(row.drawn), scores))
