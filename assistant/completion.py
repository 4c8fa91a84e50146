"""Editor-facing completion service: background model load, one worker, supersede, cache.

The pieces every editor integration needs, whatever the protocol:
- ``EngineHolder`` loads the model once in a background thread; until it is ready, requests get
  no suggestion (not an error), as Tabby #3367 and Copilot's server recommend.
- One worker thread runs denoising; a new request for a document supersedes the old one (its
  cancel flag stops the loop between two steps), as Copilot's language server does.
- ``SuggestionCache`` reuses a suggestion when the user typed its beginning (llama.vim style).
- ``assistant.requests`` shapes each request: prefix/suffix windows sized in tokens at line
  boundaries (the same windows training builds) and the one call into ``Engine.settings``, the
  model's defaults under the user's settings. The language server and the TUI both run
  through this service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from assistant.repo_context import RepoContexts
from assistant.requests import answer_check, request_settings, request_window
from assistant.settings import AssistantSettings
from engine.errors import UnmaskError
from engine.window import InfillWindow

log = logging.getLogger(__name__)


class SuggestionCache:
    """Recent (prefix, suffix) -> completion; a hit when the user typed the completion's start."""

    def __init__(self, size: int = 64) -> None:
        self.entries: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.size = size

    def put(self, prefix: str, suffix: str, completion: str) -> None:
        self.entries[(prefix, suffix)] = completion
        self.entries.move_to_end((prefix, suffix))
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def get(self, prefix: str, suffix: str) -> str | None:
        for (p, s), completion in reversed(self.entries.items()):
            if s != suffix or not prefix.startswith(p):
                continue
            typed = prefix[len(p):]
            if completion.startswith(typed) and len(typed) < len(completion):
                return completion[len(typed):]
        return None


class EngineHolder:
    """Loads the engine once, in the background; ``engine`` is None until it is ready."""

    def __init__(self, settings: AssistantSettings, on_status=None) -> None:
        self.settings = settings
        self.engine = None
        self.status = "idle"
        self.error: str | None = None
        self.on_status = on_status or (lambda status, detail: None)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        self._ready.clear()
        self.engine, self.status = None, "loading"
        self._thread = threading.Thread(target=self._load, name="unmask-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from engine.api import Engine

        s = self.settings
        self.on_status("loading", s.model or "embedded model")
        try:
            self.engine = Engine.load(s.model, device=s.device, dtype=s.dtype, backend=s.backend)
            self.status, self.error = "ready", None
            self.on_status("ready", self.engine.name)
        except UnmaskError as err:
            self.status, self.error = "error", str(err)
            self.on_status("error", str(err))
        except Exception as err:  # noqa: BLE001 - the server must keep running
            log.exception("model load failed")
            self.status, self.error = "error", f"{type(err).__name__}: {err}"
            self.on_status("error", self.error)
        finally:
            self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)


@dataclass
class Job:
    key: str
    cancel: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    """Why the job ended without a result, when it failed (not when cancelled)."""


@dataclass
class Stats:
    requests: int = 0
    cache_hits: int = 0
    not_ready: int = 0
    completed: int = 0
    cancelled: int = 0
    wasted_steps: int = 0
    denoise_s: float = 0.0
    with_context: int = 0
    """Requests that got repository context."""
    rejected: int = 0
    """Single-line suggestions withheld: every try copied the line below or left a parsing
    file unparsable (engine.syntax_guard)."""


class CompletionService:
    """Runs infills for editors on one worker thread, superseding stale work per document."""

    def __init__(self, settings: AssistantSettings, on_status=None) -> None:
        self.settings = settings
        self.holder = EngineHolder(settings, on_status)
        self.cache = SuggestionCache()
        self.stats = Stats()
        self.repo = RepoContexts()
        """Workspace folders indexed for repository context (``repo.start(roots)``)."""
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unmask-denoise")
        self._latest: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self.holder.start()

    def reconfigure(self, settings: AssistantSettings) -> None:
        reload = (settings.model, settings.backend, settings.device, settings.dtype) != (
            self.settings.model, self.settings.backend, self.settings.device, self.settings.dtype)
        self.settings = settings
        self.holder.settings = settings
        self.cache = SuggestionCache()
        if reload:
            self.holder.start()

    def new_job(self, key: str) -> Job:
        """Register a request for ``key`` (a document); the previous one is cancelled."""
        job = Job(key)
        with self._lock:
            old = self._latest.get(key)
            if old is not None:
                old.cancel.set()
            self._latest[key] = job
        return job

    def submit(self, job: Job, fn, *args) -> Future:
        return self.worker.submit(self._guarded, job, fn, *args)

    def _guarded(self, job: Job, fn, *args):
        if job.cancel.is_set():
            self.stats.cancelled += 1
            return None
        return fn(job, *args)

    def window(self, text: str, offset: int, mode: str) -> InfillWindow:
        """The request's context window (``assistant.requests.request_window``)."""
        return request_window(self.settings, self.holder.engine, text, offset, mode)

    def settings_for(self, mode: str, seed: int = 0, length: str | None = None,
                     check_examples: bool = False):
        """The request's generation settings (``assistant.requests.request_settings``); needs
        a loaded engine."""
        return request_settings(self.settings, self.holder.engine, mode, seed, length,
                                check_examples)

    def context(self, path, prefix: str, suffix: str,
                document: tuple[str, str] = ("", "")) -> str:
        """Repository context for a hole in ``path`` (empty when off, not indexed yet, or no
        engine); never waits for indexing. ``document``: the buffer before and after the
        hole."""
        engine = self.holder.engine
        if engine is None or path is None or not self.settings.repo_context:
            return ""
        from engine.repo import context_budget

        context = self.repo.context(path, prefix, suffix, engine.tokenizer,
                                    context_budget(engine.context), document)
        self.stats.with_context += bool(context)
        return context

    def infill(self, job: Job, window: InfillWindow, mode: str, path=None,
               text: str | None = None) -> str | None:
        """Blocking; returns the suggestion text or None (not ready, cancelled, failed, or
        rejected by the syntax guard). ``text``: the whole document, for the guard."""
        self.stats.requests += 1
        cached = self.cache.get(window.prefix, window.suffix)
        if cached is not None:
            self.stats.cache_hits += 1
            return self._shape(cached, mode)
        engine = self.holder.engine
        if engine is None:
            self.stats.not_ready += 1
            return None
        before, after = ("", "") if text is None else \
            (text[:window.replace_from], text[window.cursor:])
        context = self.context(path, window.prefix, window.suffix, (before, after))
        accept = None if text is None else answer_check(self.settings, before, after, mode)
        result = self.run_stream(job, engine.infill_stream(window.prefix, window.suffix,
                                                           self.settings_for(mode), context,
                                                           accept))
        if result is None:
            return None
        completion = result.completion
        if result.extra.get("accepted") is False:
            self.stats.rejected += 1
            completion = ""  # a copy of the next line or a broken file: never the right answer
        self.cache.put(window.prefix, window.suffix, completion)
        return self._shape(completion, mode)

    def generate(self, job: Job, prompt: str, seed: int = 0, on_frame=None):
        """A free generation from ``prompt`` (multi-line canvas); None when not ready/cancelled."""
        engine = self.holder.engine
        if engine is None:
            return None
        settings = self.settings_for("multi", seed, length="fixed")
        return self.run_stream(job, engine.generate_stream(prompt, settings, raw=True), on_frame)

    def fill(self, job: Job, prefix: str, suffix: str, seed: int = 0, on_frame=None, path=None,
             check_examples: bool = False):
        """Fill a hole (a function body, a selection); None when not ready or cancelled.
        ``check_examples``: a body whose docstring has ``>>>`` examples, its candidates run
        on them in the sandbox (``extra["rerank"]["examples_passed"]`` says how many passed)."""
        engine = self.holder.engine
        if engine is None:
            return None
        return self.run_stream(job, engine.infill_stream(
            prefix, suffix, self.settings_for("multi", seed, check_examples=check_examples),
            self.context(path, prefix, suffix)), on_frame)

    def run_stream(self, job: Job, stream, on_frame=None):
        """Consume a denoising stream, stopping between steps when the job is cancelled;
        ``on_frame(frame)`` sees every step (the TUI draws the canvas from it)."""
        from engine.api import Completion

        start = time.perf_counter()
        steps = 0
        try:
            for item in stream:
                if isinstance(item, Completion):
                    self.stats.completed += 1
                    self.stats.denoise_s += time.perf_counter() - start
                    return item
                steps += 1
                if on_frame is not None:
                    on_frame(item)
                if job.cancel.is_set():
                    stream.close()
                    self.stats.cancelled += 1
                    self.stats.wasted_steps += steps
                    return None
        except UnmaskError as err:
            log.warning("completion failed: %s", err)
            job.error = str(err)
            return None
        return None

    @staticmethod
    def _shape(text: str, mode: str) -> str:
        if mode == "single":
            return text.split("\n", 1)[0]
        return text.rstrip() + ("\n" if text.endswith("\n") else "")
