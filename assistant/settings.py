"""User settings shared by the language server and the TUI, persisted as JSON.

Stored in ``$UNMASK_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/unmask`` or ``~/.config/unmask``
(``settings.json``). Unknown keys are rejected with the key's name so typos surface.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from engine.choices import ALGORITHMS, BACKENDS, LENGTH_STRATEGIES, MAX_PARENT_BRANCHES
from engine.errors import ConfigError


@dataclass
class AssistantSettings:
    """What the editors can change; None means "the model's own default"."""

    model: str | None = None
    """Model name or path (None: the embedded model)."""
    backend: str = "auto"
    """auto | torch | llamacpp."""
    device: str = "auto"
    """auto | cpu | cuda | mps."""
    dtype: str = "auto"
    """auto | float32 | bfloat16 | float16."""
    steps: int | None = None
    """Denoising steps for a full canvas (None: one token per step)."""
    alg: str | None = None
    """origin | maskgit_plus | topk_margin | entropy (None: the model's generation_config)."""
    temperature: float | None = None
    """Token temperature, 0 = greedy (None: the model's generation_config)."""
    max_tokens_line: int = 24
    """Canvas for single-line completions."""
    max_tokens_block: int = 96
    """Canvas for multi-line completions and generated bodies."""
    prefix_tokens: int = 384
    """Context before the cursor, in tokens (blocks, bodies and explicit requests)."""
    suffix_tokens: int = 128
    """Context after the cursor, in tokens (blocks, bodies and explicit requests)."""
    line_context_tokens: int = 256
    """Context for single-line suggestions, which run as you type: 3/4 before the cursor,
    1/4 after. Smaller than prefix + suffix because every pass reads all of it (latency grows
    with it: benchmarks/latency_breakdown.py), and the window's start moves on a grid so that
    consecutive requests share it (engine.window.anchored_tail, engine.reuse)."""
    repo_context: bool = True
    """Put context before the prefix (engine.repo): by default the edited file's own lines that
    the window leaves out, those that continue the lines before the cursor."""
    line_canvas: str = "fixed"
    """Single-line canvas: fixed (``max_tokens_line`` slots, no probe: the line stop ends the
    request anyway) or adaptive (a probe pass sizes it first: one full pass more). Fixed is the
    default since the adapted 135M model: it scores what exact decoding scores on the 300
    single-line tasks and is the fastest (docs/guide.md, the typing replay)."""
    cache_refresh: int = 8
    """Editor fast path: reuse the prefix's and suffix's keys/values, recomputed every this
    many passes (0: exact, everything recomputed each pass); see benchmarks/decode_speed.py."""
    reuse_context: bool = True
    """With the context cache: start each request from the keys of the previous one for the
    part of the file above the cursor that did not change (engine.reuse)."""
    stop_loops: bool = True
    """End a suggestion at a loop (a unit repeated 4+ times) and keep its first copy: a
    looping suggestion is never what the user wants (engine.repetition)."""
    limit_scope: bool = True
    """Cut a block suggestion (a block, a body, an explicit request) at the first line that
    leaves the indentation block it starts in or repeats the code below the cursor
    (engine.scope): the canvas is sized before the text is known, and the model goes on past
    the hole."""
    syntax_guard: bool = True
    """Single-line suggestions: an answer that copies the line below the cursor, or (in a
    Python file that parses around the cursor with a stand-in line) would leave the file
    unparsable, is withheld (engine.syntax_guard). Neither is ever the right one in practice,
    and a third of the embedded model's answers break the file (docs/guide.md)."""
    parent_branches: int = 0
    """Suggestions from an adapted model: answers its autoregressive parent writes too, and
    the one the parent finds likeliest with the code below the cursor is shown (a block at
    every length; engine.rerank; the embedded model's own default is 3). 0, the default here:
    the diffusion answer alone, since the parent's answers cost sequential passes that
    as-you-type suggestions cannot afford within their latency targets (docs/guide.md)."""
    syntax_retries: int = 0
    """With the guard: other decodings tried before an answer is withheld (Engine.alternatives:
    left to right, then sampled; at most 2). Each costs a whole decoding; on held-out lines two
    made more answers parse and none more exact (docs/guide.md), so 0 is the default."""

    def __post_init__(self) -> None:
        for name in ("max_tokens_line", "max_tokens_block", "prefix_tokens",
                     "line_context_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name} must be at least 1, got {getattr(self, name)}")
        if self.cache_refresh < 0:
            raise ConfigError(f"setting cache_refresh must be >= 0, got {self.cache_refresh}")
        if not 0 <= self.syntax_retries <= 2:
            raise ConfigError(f"setting syntax_retries must be 0, 1 or 2, got "
                              f"{self.syntax_retries}")
        if not 0 <= self.parent_branches <= MAX_PARENT_BRANCHES:
            raise ConfigError(f"setting parent_branches must be 0 to {MAX_PARENT_BRANCHES}, "
                              f"got {self.parent_branches}")
        if self.suffix_tokens < 0:
            raise ConfigError(f"setting suffix_tokens must be >= 0, got {self.suffix_tokens}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"setting steps must be at least 1, got {self.steps}")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"setting temperature must be >= 0, got {self.temperature}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"setting backend must be one of {', '.join(BACKENDS)}, got "
                              f"{self.backend!r}")
        if self.line_canvas not in LENGTH_STRATEGIES:
            raise ConfigError(f"setting line_canvas must be one of "
                              f"{', '.join(LENGTH_STRATEGIES)}, got {self.line_canvas!r}")
        if self.alg is not None and self.alg not in ALGORITHMS:
            raise ConfigError(f"setting alg must be one of {', '.join(ALGORITHMS)}, got "
                              f"{self.alg!r}")

    def updated(self, raw: dict | None) -> "AssistantSettings":
        """A copy with the known keys of ``raw`` applied (camelCase accepted from editors)."""
        if not raw:
            return self
        known = {f.name for f in fields(self)}
        values = {}
        for key, value in raw.items():
            snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
            if snake not in known:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            values[snake] = value
        try:
            return replace(self, **values)
        except TypeError as err:
            raise ConfigError(f"bad settings: {err}") from err

    def to_dict(self) -> dict:
        return asdict(self)


def config_dir() -> Path:
    if os.environ.get("UNMASK_CONFIG_DIR"):
        return Path(os.environ["UNMASK_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "unmask"


def load_settings() -> AssistantSettings:
    path = config_dir() / "settings.json"
    if not path.exists():
        return AssistantSettings()
    try:
        return AssistantSettings().updated(json.loads(path.read_text()))
    except (json.JSONDecodeError, OSError) as err:
        raise ConfigError(f"cannot read {path} ({err}); fix or delete it") from err


def save_settings(settings: AssistantSettings) -> Path:
    path = config_dir() / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings.to_dict(), indent=2))
    os.replace(tmp, path)
    return path
