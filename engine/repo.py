"""Repository context: the edited file's unseen lines, and the user's other Python files,
chunked and retrieved by BM25.

The retrieve-then-generate recipe of RepoCoder (Zhang et al. 2023) and of repository-level FIM
prompts (Qwen2.5-Coder, StarCoder2): the code most similar to the code around the cursor goes
before the prefix, each piece under a comment naming its path. By default (``RETRIEVAL``) that
code is the edited file's own lines that the request's window leaves out, since the idiom the
cursor needs is most often written elsewhere in the same file (measured: docs/guide.md,
"Repository context"); other files' chunks are the other kinds. Sparse BM25 (``bm25s``,
maintained, numpy-only) over identifier tokens; code search studies find it as good as small
dense retrievers for in-repository completion, and it needs no model.

One module for inference and training alike (``training.personalize`` builds exactly this
context), so it lives in ``engine``, which both may import. The file being edited is never
retrieved from the index (its saved copy can be stale): it is skipped by path, and any file that
contains the text right around the hole is taken to be its saved copy and skipped too (batch
requests carry no path). Its own lines outside the request's window come from the request
itself, for the ``file`` retrievals.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.symbols import Symbol, file_symbols
from engine.window import outside_window

ALWAYS_SKIPPED = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "env", ".tox", ".nox",
                  "node_modules", "build", "dist", ".eggs", ".mypy_cache", ".pytest_cache"}
MAX_FILE_BYTES = 1_000_000
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USED = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*)\s*\(")
"""A name the code uses from elsewhere: an attribute (``.name``) or a call (``name(``)."""
CHUNK_LINES, CHUNK_STRIDE = 16, 8
"""Chunk windows (RepoCoder uses fixed line windows with half overlap)."""
CONTEXT_TOKENS = 192
"""Token budget of the repository context, at inference and in personalization alike."""
NEAR_LINES, NEAR_LEAD, NEAR_STRIDE = 8, 4, 2
"""Windows of the edited file's own unseen lines, RepoCoder's way: a window whose first
``NEAR_LEAD`` lines match the ``NEAR_LEAD`` lines before the hole is shown with the lines that
follow them, where the code that came next there may be the code that comes next here. Half a
chunk, so that one fits in the budget beside another file's chunk."""
RETRIEVALS = ("bm25", "symbols", "both", "file", "file+bm25")
RETRIEVAL = "file"
"""What fills the context: ``bm25`` the chunks of other files most similar to the code around
the hole, ``symbols`` stubs of the functions and classes that code uses (``engine.symbols``),
``both`` stubs first (up to half the budget), then chunks; ``file`` the windows of the edited
file itself that the request's window leaves out, most similar first, ``file+bm25`` those
first (up to half the budget), then chunks of other files."""


def context_budget(model_context: int) -> int:
    """The context budget for a model: ``CONTEXT_TOKENS``, at most a quarter of its window."""
    return min(CONTEXT_TOKENS, model_context // 4)


def _gitignore(root: Path):
    import pathspec

    lines = []
    for ignore in [root / ".gitignore", root / ".git" / "info" / "exclude"]:
        if ignore.is_file():
            lines += ignore.read_text(errors="replace").splitlines()
    return pathspec.PathSpec.from_lines("gitignore", lines)


def _excluded(rel: str, patterns: list[str]) -> bool:
    return any(rel == p.rstrip("/") or fnmatch.fnmatch(rel, p)
               or rel.startswith(p.rstrip("/") + "/") for p in patterns)


def python_files(root: Path, exclude: list[str] | None = None) -> list[Path]:
    """The repository's Python files (relative paths), honouring ``.gitignore`` and ``exclude``
    (globs relative to the root; a plain relative path is one file or folder). An excluded file
    is never opened. Raises ConfigError for a bad root, no Python files, or an exclude that
    matches nothing."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--repo {root} is not a folder; pass the repository's root folder")
    exclude = [p.replace("\\", "/") for p in (exclude or [])]
    exclude = [p[2:] if p.startswith("./") else p for p in exclude]
    ignored = _gitignore(root)
    found, used = [], set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in ALWAYS_SKIPPED or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        rel_s = rel.as_posix()
        if ignored.match_file(rel_s):
            continue
        hits = [p for p in exclude if _excluded(rel_s, [p])]
        if hits:
            used.update(hits)
            continue
        if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
            found.append(rel)
    unused = [p for p in exclude if p not in used]
    if unused:
        raise ConfigError(f"--exclude {unused[0]!r} matches no Python file under {root}; give a "
                          "glob or path relative to the repository root")
    if not found:
        raise ConfigError(f"{root} has no Python files (after .gitignore and --exclude); point "
                          "--repo at a Python repository")
    return found


@dataclass
class Chunk:
    path: str
    """Path relative to the repository root, with forward slashes."""
    start: int
    """First line (0-based)."""
    text: str


def chunk_file(rel: str, text: str, size: int = CHUNK_LINES,
               stride: int = CHUNK_STRIDE) -> list[Chunk]:
    lines = text.splitlines(keepends=True)
    out = []
    for start in range(0, max(1, len(lines) - size + stride), stride):
        body = "".join(lines[start:start + size])
        if body.strip():
            out.append(Chunk(rel, start, body))
    return out


class LeadIndex:
    """BM25 over the first ``lead`` lines of each of a few chunks (the windows of one file,
    indexed in milliseconds); read-only once built, so requests on several threads share it."""

    def __init__(self, chunks: list[Chunk], lead: int) -> None:
        import bm25s

        self.chunks = chunks
        self.retriever = bm25s.BM25()
        if chunks:
            self.retriever.index([code_tokens("".join(c.text.splitlines(keepends=True)[:lead]))
                                  or ["_"] for c in chunks], show_progress=False)

    def ranked(self, query: list[str], k: int) -> list[Chunk]:
        """The ``k`` chunks whose first lines are most similar to ``query``."""
        if not self.chunks or not query:
            return []
        ids, scores = self.retriever.retrieve([query], k=min(k, len(self.chunks)),
                                              show_progress=False)
        return [self.chunks[i] for i, score in zip(ids[0].tolist(), scores[0].tolist())
                if score > 0]


@functools.lru_cache(maxsize=8)
def unseen_windows(path: str, before: str, after: str) -> LeadIndex:
    """The ``NEAR_LINES`` windows of a file's text before and after a request's window, indexed
    by their first ``NEAR_LEAD`` lines. Kept for the next requests: as-you-type requests on one
    document leave the same text out until their window moves, and indexing a 3,000-line file's
    windows costs tens of milliseconds."""
    return LeadIndex([c for part in (before, after)
                      for c in chunk_file(path, part, NEAR_LINES, NEAR_STRIDE)], NEAR_LEAD)


def code_tokens(text: str) -> list[str]:
    """Identifiers, also split at snake_case and camelCase boundaries, lower-cased."""
    out = []
    for ident in IDENT.findall(text):
        low = ident.lower()
        out.append(low)
        parts = [p for p in re.split(r"_|(?<=[a-z0-9])(?=[A-Z])", ident) if p]
        if len(parts) > 1:
            out += [p.lower() for p in parts]
    return out


class RepoIndex:
    """BM25 over fixed line windows of a repository's Python files; thread-safe updates."""

    def __init__(self, root: Path, exclude: list[str] | None = None,
                 retrieval: str = RETRIEVAL) -> None:
        if retrieval not in RETRIEVALS:
            raise ConfigError(f"repository retrieval must be one of {', '.join(RETRIEVALS)}, "
                              f"got {retrieval!r}")
        self.retrieval = retrieval
        self.root = Path(root).resolve()
        self.files: dict[str, str] = {}
        for rel in python_files(self.root, exclude):
            try:
                self.files[rel.as_posix()] = (self.root / rel).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
        self._lock = threading.Lock()
        self._build()

    @classmethod
    def from_texts(cls, root: Path, files: dict[str, str]) -> "RepoIndex":
        """An index over given texts (training builds it from the files it reads itself)."""
        index = cls.__new__(cls)
        index.root, index.files, index._lock = Path(root), dict(files), threading.Lock()
        index.retrieval = RETRIEVAL
        index._build()
        return index

    def _build(self) -> None:
        import bm25s

        chunks = [c for rel, text in sorted(self.files.items()) for c in chunk_file(rel, text)]
        retriever = bm25s.BM25()
        if chunks:
            retriever.index([code_tokens(c.text) or ["_"] for c in chunks], show_progress=False)
        symbols: dict[str, list[Symbol]] = {}
        if self.retrieval != "bm25":
            for rel, text in sorted(self.files.items()):
                for sym in file_symbols(rel, text):
                    symbols.setdefault(sym.name, []).append(sym)
        self.chunks, self.retriever, self.symbols = chunks, retriever, symbols

    def update(self, rel: str, text: str | None) -> None:
        """A file was saved (text) or deleted (None): re-index."""
        with self._lock:
            if text is None:
                self.files.pop(rel, None)
            else:
                self.files[rel] = text
            self._build()

    def search(self, query: str, k: int, skip: set[str]) -> list[Chunk]:
        """The ``k`` best chunks for ``query`` from files not in ``skip``."""
        tokens = code_tokens(query)
        if not tokens or not self.chunks:
            return []
        with self._lock:
            chunks, retriever = self.chunks, self.retriever
        n = min(len(chunks), k * 4 + 8)
        ids, scores = retriever.retrieve([tokens], k=n, show_progress=False)
        out = []
        for i, score in zip(ids[0].tolist(), scores[0].tolist()):
            if score <= 0 or chunks[i].path in skip:
                continue
            out.append(chunks[i])
            if len(out) == k:
                break
        return out

    def definitions(self, before: str, after: str, skip: set[str], k: int = 8) -> list[Symbol]:
        """Stubs of up to ``k`` names called or accessed around the hole (``USED``) and defined
        in files not in ``skip``: the nearest the cursor first (the end of ``before``, then
        ``after``)."""
        with self._lock:
            symbols = self.symbols

        def used(text: str) -> list[str]:
            return [a or b for a, b in USED.findall(text)]

        names = list(dict.fromkeys([*reversed(used(before)), *used(after)]))
        out = []
        for name in names:
            found = next((s for s in symbols.get(name, ()) if s.path not in skip), None)
            if found is not None:
                out.append(found)
                if len(out) == k:
                    break
        return out

    def context(self, prefix: str, suffix: str, tokenizer, budget: int,
                path: str | None = None, document: tuple[str, str] = ("", "")) -> str:
        """Repository context for a hole, whole blocks each under ``# <path>`` within
        ``budget`` tokens (``RETRIEVAL``): the best chunks of other files, best first, then
        stubs of what the code around the hole uses, then windows of the edited file itself,
        nearest the hole. ``prefix`` and ``suffix``: the request's window; ``document``: the
        edited file's whole text before and after the hole, of which the ``file`` retrievals
        read what the window leaves out (``engine.window.outside_window``)."""
        if budget <= 0:
            return ""
        before = "".join(prefix.splitlines(keepends=True)[-12:])
        after = "".join(suffix.splitlines(keepends=True)[:4])
        skip = {path} if path else set()
        if self.retrieval != "file":  # only other files' chunks and stubs read the index
            skip |= self._saved_copies(prefix, suffix)
        used = 0

        def fit(blocks: list[str], room: int) -> list[str]:
            nonlocal used
            kept = []
            for block in blocks:
                n = len(tokenizer.encode(block))
                if used + n <= room:
                    kept.append(block)
                    used += n
            return kept

        def shown(chunks: list[Chunk]) -> list[str]:
            return [f"# {c.path}\n{c.text}" + ("" if c.text.endswith("\n") else "\n")
                    for c in chunks]

        stubs = chunks = near = []
        if self.retrieval in ("file", "file+bm25"):
            windows = unseen_windows(path or "this file",
                                     *outside_window(*document, prefix, suffix))
            lead = "".join(prefix.splitlines(keepends=True)[-NEAR_LEAD:])
            near = fit(shown(windows.ranked(code_tokens(lead), 4)),
                       budget // 2 if self.retrieval == "file+bm25" else budget)
        if self.retrieval in ("symbols", "both"):
            stubs = fit([f"# {s.path}\n{s.text}" for s in self.definitions(before, after, skip)],
                        budget // 2 if self.retrieval == "both" else budget)
        if self.retrieval in ("bm25", "both", "file+bm25"):
            chunks = fit(shown(self.search(before + after, 8, skip)), budget)
        return "".join(chunks + stubs + near)

    def _saved_copies(self, prefix: str, suffix: str) -> set[str]:
        """Files holding the text right before and after the hole: the edited file's saved copy."""
        before = prefix[-300:].strip()
        after = suffix[:300].strip()
        marks = [m for m in (before, after) if len(m) >= 40]
        if not marks:
            return set()
        return {rel for rel, text in self.files.items() if all(m in text for m in marks)}
