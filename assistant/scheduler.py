"""One model, many clients: a bounded queue, batched denoising, cancellation.

The HTTP server's routes only validate a request and submit it here (vLLM's split between
entrypoints and engine). One worker thread takes the oldest request and every queued request
that can share its batch (same canvas size and sampling settings), runs them together through
``engine.batch.infill_batch`` (one forward pass per step for the whole batch), and streams each
ticket its own canvases. A full queue refuses at once (the route answers 503 + Retry-After); a
ticket whose client went away is dropped between two steps, and a batch whose clients all went
away stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from engine.errors import UnmaskError

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


@dataclass
class Ticket:
    """One request: what to fill, how, and where its events go (read by the route)."""

    prefix: str
    suffix: str
    context: str
    settings: object
    """engine.api.GenerationSettings (fixed canvas)."""
    events: queue.Queue = field(default_factory=queue.Queue)
    """("step", step, steps, canvas ids) ... then ("done", Completion) or ("error", message)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    chat: bool = False
    """A chat prompt (``prefix``) for an instruct model: decoded alone, with its template."""
    rerank: bool = False
    """The final answer may be replaced by the parent's likelier one (``Engine.reranked``,
    ``settings.parent_branches``): for requests that only read the final answer, since the
    streamed steps would disagree with a replaced one."""

    def key(self) -> tuple:
        """Requests with equal keys can share a batch (same canvas and sampling)."""
        s = self.settings
        if s is None:
            return (self.chat,)
        return (self.chat, s.max_new_tokens, s.steps, s.alg, s.temperature, s.top_p, s.top_k,
                s.block_length, s.stop, s.threshold, s.gamma, s.alg_temp, s.seed)


@dataclass
class SchedulerStats:
    submitted: int = 0
    rejected: int = 0
    completed: int = 0
    cancelled: int = 0
    batches: int = 0
    batched_requests: int = 0


class Scheduler:
    """Batches queued fills on one worker thread over ``engine_getter()``'s engine."""

    def __init__(self, engine_getter, max_batch: int = 16, max_queue: int = 64,
                 gather_s: float = 0.01, batching: bool = True) -> None:
        self.engine_getter = engine_getter
        self.max_batch = max_batch if batching else 1
        self.max_queue, self.gather_s = max_queue, gather_s
        self.stats = SchedulerStats()
        self._pending: list[Ticket] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="unmask-scheduler", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> Ticket:
        with self._cond:
            if len(self._pending) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull
            self._pending.append(ticket)
            self.stats.submitted += 1
            self._cond.notify()
        return ticket

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _next_batch(self) -> list[Ticket]:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
        time.sleep(self.gather_s)  # let concurrent clients' requests arrive together
        with self._cond:
            live = [t for t in self._pending if not t.cancelled.is_set()]
            self.stats.cancelled += len(self._pending) - len(live)
            if not live:
                self._pending = []
                return []
            key = live[0].key()
            size = 1 if live[0].chat else self.max_batch
            batch = [t for t in live if t.key() == key][:size]
            self._pending = [t for t in live if t not in batch]
            return batch

    def _loop(self) -> None:
        while not self._stop:
            batch = self._next_batch()
            if batch:
                self._run(batch)

    def _run(self, batch: list[Ticket]) -> None:
        from engine.batch import BatchStep, infill_batch

        engine = self.engine_getter()
        if engine is None:
            for t in batch:
                t.events.put(("error", "the model is not loaded yet"))
            return
        self.stats.batches += 1
        self.stats.batched_requests += len(batch)
        if batch[0].chat:
            stream = _as_batch(engine.generate_stream(batch[0].prefix, batch[0].settings))
        else:
            stream = infill_batch(engine, [(t.prefix, t.suffix, t.context) for t in batch],
                                  batch[0].settings)
        sent_final = [False] * len(batch)
        try:
            for item in stream:
                if isinstance(item, BatchStep):
                    for i, (t, canvas) in enumerate(zip(batch, item.canvases)):
                        if not t.cancelled.is_set() and not sent_final[i]:
                            t.events.put(("step", item.step, item.steps, canvas))
                        sent_final[i] = item.done[i]  # a finished row's later canvases: noise
                    if all(t.cancelled.is_set() for t in batch):
                        stream.close()  # every client went away: stop between two steps
                        self.stats.cancelled += len(batch)
                        return
                else:
                    for t, completion in zip(batch, item):
                        if t.rerank and not t.cancelled.is_set():
                            completion = engine.reranked(completion, t.prefix, t.suffix,
                                                         t.settings, t.context)
                        t.events.put(("done", completion))
                    self.stats.completed += len(batch)
        except UnmaskError as err:
            for t in batch:
                t.events.put(("error", str(err)))
        except Exception as err:  # noqa: BLE001 - the server must keep serving
            log.exception("batch failed")
            for t in batch:
                t.events.put(("error", f"internal error: {type(err).__name__}"))


def _as_batch(stream):
    """A single request's frame stream in ``infill_batch``'s shape (one row)."""
    from engine.api import Completion
    from engine.batch import BatchStep

    for item in stream:
        if isinstance(item, Completion):
            yield [item]
        else:
            yield BatchStep(item.step, item.steps, [item.canvas], [False])
