"""The shape of an editor request: its context window and its generation settings.

One place for both, used by every front end (through ``CompletionService``) and by the
repository benchmark (``unmask eval repo``), so the benchmark measures what an editor gets: a
single line reads ``line_context_tokens`` on a grid start with a ``max_tokens_line`` canvas, a
block or body ``prefix_tokens`` + ``suffix_tokens`` with a ``max_tokens_block`` canvas, both on
the fast path (the context cache, reuse, the loop stop) under the user's settings.
"""

from __future__ import annotations

from assistant.settings import AssistantSettings
from engine.syntax_guard import answer_check as file_check
from engine.window import InfillWindow, build_infill


def canvas_slots(s: AssistantSettings, mode: str) -> int:
    """The canvas of a request: ``max_tokens_block`` for multi, ``max_tokens_line`` else."""
    return s.max_tokens_block if mode == "multi" else s.max_tokens_line


def request_settings(s: AssistantSettings, engine, mode: str, seed: int = 0,
                     length: str | None = None, check_examples: bool = False):
    """``mode`` single: a single-line suggestion as you type; multi: a block, a body, an
    explicit request. ``Engine.settings`` (the model's generation_config) under the user's
    settings. ``seed`` > 0 asks for another candidate, so it samples (temperature at least
    0.6). ``length`` None: ``line_canvas`` for a single line, adaptive otherwise.
    ``check_examples``: a body checked by its docstring's examples, which needs the parent's
    candidates: the user's ``parent_branches``, else the model's own count, else 3 (the
    embedded model's)."""
    new = canvas_slots(s, mode)
    branches = s.parent_branches
    if check_examples:
        branches = branches or engine.settings().parent_branches or 3
    length = length or (s.line_canvas if mode == "single" else "adaptive")
    temperature = s.temperature if seed == 0 else max(s.temperature or 0.0, 0.6)
    return engine.settings(
        max_new_tokens=new, steps=s.steps or new, alg=s.alg, temperature=temperature,
        length=length, seed=seed, stop=("\n",) if mode == "single" else None,
        cache_refresh=s.cache_refresh, stop_loops=s.stop_loops,
        limit_scope=s.limit_scope and mode == "multi", retries=s.syntax_retries,
        reuse_context=s.reuse_context and s.cache_refresh > 0,
        parent_branches=branches, check_examples=check_examples)


def request_window(s: AssistantSettings, engine, text: str, offset: int,
                   mode: str) -> InfillWindow:
    """Prefix/suffix windows around ``offset`` that fit the model's context with the canvas: a
    single line reads ``line_context_tokens`` (3/4 before, 1/4 after) from a start that moves
    on a grid (as-you-type requests share it), anything else ``prefix_tokens`` +
    ``suffix_tokens``."""
    single = mode == "single"
    want_pre, want_suf = (s.line_context_tokens - s.line_context_tokens // 4,
                          s.line_context_tokens // 4) if single else \
        (s.prefix_tokens, s.suffix_tokens)
    room = engine.context - canvas_slots(s, mode) - 2
    suffix_tokens = min(want_suf, room // 4)
    prefix_tokens = max(1, min(want_pre, room - suffix_tokens))
    return build_infill(text, offset, engine.tokenizer, prefix_tokens, suffix_tokens,
                        stable_start=single)


def answer_check(s: AssistantSettings, before: str, after: str, mode: str):
    """``accept`` for ``Engine.infill_stream``: is the answer's line no copy of the line below
    the cursor, and does the file ``before`` + answer + ``after`` (the whole document around the
    request) still parse with it (or once a block it opens gets its body), where the file can
    tell (``engine.syntax_guard.answer_check``). None where the guard is off
    (``syntax_guard``) or the request is not a single line."""
    if not s.syntax_guard or mode != "single":
        return None
    return file_check(before, after)
