"""Many infills decoded by worker processes, each on its own share of the CPU's cores.

A small model's denoising passes on the context cache compute a few dozen rows at a time, too
little work to keep two threads of one process busy: on a 2-core CPU, two one-thread workers
decode a batch of editor requests about 1.2x faster than one two-thread process
(``benchmarks/decode_workers.py``), a whole ``eval repo`` run 1.08x. The answers are nearly
always the same: a bf16 forward on one thread can round a sum differently than on two (2 of
360 answers differed in a run). Each worker loads the model once; requests go out one at a
time, so a slow block does not hold back the rest, and answers come back in request order.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Iterable, Iterator

_engine = None  # the worker's own model, loaded once by ``_start``


def _start(model: str, device: str, dtype: str, threads: int) -> None:
    global _engine
    import torch

    from engine.api import Engine

    torch.set_num_threads(threads)
    _engine = Engine.load(model, device=device, dtype=dtype)


def complete(engine, request: tuple) -> str:
    """The completion text ``engine`` gives ``request``: (prefix, suffix, settings, context),
    the shape every caller of the pool (and its in-process stand-in) asks in."""
    prefix, suffix, settings, context = request
    return engine.infill(prefix, suffix, settings, context=context).completion


def _infill(request: tuple) -> str:
    return complete(_engine, request)


def cpu_cores() -> int:
    """The cores this process may run on (a container's or ``taskset``'s share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1


def worker_threads(workers: int) -> int:
    """Threads each decode runs on with ``workers`` decoding processes: the cores shared out
    evenly; with one, the decode runs in this process, on its own threads."""
    if workers == 1:
        import torch

        return torch.get_num_threads()
    return max(1, cpu_cores() // workers)


def default_workers(engine, memory_bytes: int | None = None) -> int:
    """2 on a CPU with 2 or more cores where two more copies of the weights take at most a
    quarter of the memory (measured on 2 cores only: more workers are not assumed to help);
    1 otherwise (a GPU, the llama.cpp back end, a model too big to copy)."""
    if engine.device.type != "cpu" or engine.backend != "torch" or cpu_cores() < 2:
        return 1
    weights = sum(p.numel() * p.element_size() for p in engine.denoiser.loaded.model.parameters())
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 2 if 2 * weights <= memory_bytes // 4 else 1


class InfillPool:
    """``workers`` processes, each with ``model`` loaded on ``worker_threads(workers)``
    threads. ``map`` yields each request's completion text in order. Use as a context
    manager: leaving it stops the workers."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto",
                 workers: int = 2) -> None:
        if workers < 2:
            raise ValueError("InfillPool needs 2 or more workers; decode in-process with 1")
        self._start = (workers, (str(model), device, dtype, worker_threads(workers)))
        self._pool = None  # started by the first request: a rerun whose answers are all kept
        # loads no model copies

    def map(self, requests: Iterable[tuple]) -> Iterator[str]:
        """``requests``: (prefix, suffix, settings, context) each."""
        requests = list(requests)
        if not requests:
            return iter(())
        if self._pool is None:
            workers, initargs = self._start
            # spawn: a forked child of a process that already ran torch can hang in its threads
            self._pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_start, initargs=initargs)
        return self._pool.imap(_infill, requests, chunksize=1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def __enter__(self) -> "InfillPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
