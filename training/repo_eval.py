"""``unmask eval repo``: the repo-hole benchmark.

Held-out files (``--exclude``: never trained on, never retrieved) give test-verified holes
(``training.holes``): single lines, and blocks of 2-4 lines. Each is filled as an editor would
ask for it (the caller's ``Request``: the front ends' context windows and fast decoding,
``assistant.requests``) and scored by running the repository's own suite on a temporary copy
(``engine.sandbox.RepoSandbox``): pass@1, plus exact match against the removed lines. Results
are cached by completion text, so equal answers cost one test run, and answers whose verdict is
known without a run (the removed lines themselves, a file that no longer parses) cost none.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import ConfigError
from engine.repo import RETRIEVAL, RepoIndex, context_budget, python_files
from training.holes import Hole, load_holes, require_passing, save_holes
from training.holes import mine as mine_holes


@dataclass
class Benchmark:
    repo: Path
    exclude: list[str]
    held_out: list[str]
    """The files the holes come from."""
    holes: dict[str, list[Hole]]
    """kind (line | block) -> verified holes."""


def held_out_files(repo: Path, exclude: list[str]) -> list[str]:
    if not exclude:
        raise ConfigError("eval repo needs --exclude FILE_OR_GLOB: the held-out files whose "
                          "holes are scored (never trained on, never retrieved)")
    kept = {p.as_posix() for p in python_files(repo, exclude)}
    return sorted(p.as_posix() for p in python_files(repo) if p.as_posix() not in kept)


def mine(repo: Path, exclude: list[str], sandbox, n_line: int = 60, n_block: int = 30,
         cache: Path | None = None, progress=None) -> Benchmark:
    """Verified holes of the held-out files (cached by the files' content and the test command)."""
    held = held_out_files(repo, exclude)
    texts = {rel: (repo / rel).read_text(encoding="utf-8") for rel in held}
    require_passing(sandbox)
    everything = [(repo / p).read_bytes().decode("utf-8", "replace") for p in python_files(repo)]
    key = hashlib.sha256("\0".join([*exclude, " ".join(sandbox.argv[1:]), str(n_line),
                                    str(n_block)] + everything).encode())
    cached = cache / f"{key.hexdigest()[:16]}.jsonl" if cache else None
    if cached is not None and cached.exists():
        all_holes = load_holes(cached)
    else:
        all_holes = mine_holes(sandbox, texts, {"line": n_line, "block": n_block}, progress)
        if cached is not None:
            save_holes(cached, all_holes)
    by_kind = {k: [h for h in all_holes if h.kind == k] for k in ("line", "block")}
    if not any(by_kind.values()):
        raise ConfigError(f"no hole in {', '.join(held)} makes the test suite fail when blanked; "
                          "hold out files that the tests cover")
    return Benchmark(repo, exclude, held, by_kind)


Request = Callable[[object, Hole], tuple[str, str, object]]
"""``request(engine, hole) -> (prefix, suffix, settings)``: how an editor would ask for the hole
(a single-line suggestion for ``line`` holes, an explicit block request for ``block`` ones)."""


def completion_for(engine, hole: Hole, index: RepoIndex | None, request: Request) -> str:
    """The model's text for a hole: the first line for single-line holes (an editor's
    single-line completion), the whole canvas for blocks."""
    prefix, suffix, settings = request(engine, hole)
    context = index.context(prefix, suffix, engine.tokenizer, context_budget(engine.context),
                            path=hole.path) if index else ""
    text = engine.infill(prefix, suffix, settings, context=context).completion
    return text.split("\n", 1)[0] + "\n" if hole.kind == "line" else text


def known_outcome(hole: Hole, middle: str) -> bool | None:
    """The verdict of the test suite when it needs no run, else None: the file with the removed
    lines put back is the file the suite passed on when the hole was verified, and a file that
    no longer parses fails (a verified hole's file is imported by the tests, or blanking it
    would not have failed them)."""
    filled = hole.filled(middle)
    if filled == hole.filled(hole.middle):
        return True
    try:
        ast.parse(filled)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        return False
    return None


def score(engine, bench: Benchmark, sandbox, with_context: bool, request: Request,
          progress=None, label: str = "", records: list | None = None,
          retrieval: str = RETRIEVAL) -> dict:
    """pass@1 and exact match per hole kind for one (model, context) configuration; one record
    per hole is appended to ``records`` when given."""
    index = RepoIndex(bench.repo, bench.exclude, retrieval) if with_context else None
    results: dict = {}
    seen: dict[tuple[str, str], bool] = {}
    total = sum(len(v) for v in bench.holes.values())
    done = 0
    for kind, holes in bench.holes.items():
        passed = exact = 0
        for hole in holes:
            middle = completion_for(engine, hole, index, request)
            key = (hole.key, middle)
            if key not in seen:
                known = known_outcome(hole, middle)
                seen[key] = known if known is not None else \
                    sandbox.run({hole.path: hole.filled(middle)}).passed
            passed += seen[key]
            exact += middle.strip() == hole.middle.strip()
            done += 1
            if records is not None:
                records.append({"config": label, "hole": hole.key, "kind": kind,
                                "completion": middle, "reference": hole.middle,
                                "passed": seen[key]})
            if progress is not None:
                progress(label, done, total, passed)
        n = len(holes)
        results[kind] = {"n": n, "pass@1": round(passed / n, 4) if n else 0.0,
                         "exact": round(exact / n, 4) if n else 0.0}
    return results
