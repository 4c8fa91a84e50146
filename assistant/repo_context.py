"""Repository context for the editors: workspace folders indexed in the background.

The language server indexes its workspace folders, the TUI the folder it opened. Indexing runs
on one background thread; until a folder's index is ready, and for files outside every indexed
folder, completions simply get no context: retrieval never blocks a completion. Saved files are
re-indexed on the same thread. The file being edited is never retrieved (skipped by path).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.errors import UnmaskError

log = logging.getLogger(__name__)


class RepoContexts:
    """RepoIndex per workspace folder, built and updated off the caller's thread."""

    def __init__(self) -> None:
        self.indexes: dict[Path, object] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unmask-index")
        self._lock = threading.Lock()

    def start(self, roots: list[Path]):
        """Index ``roots`` in the background; returns the future of the last one (tests wait)."""
        future = None
        for root in roots:
            future = self._worker.submit(self._build, Path(root).resolve())
        return future

    def _build(self, root: Path) -> None:
        from engine.repo import RepoIndex

        try:
            index = RepoIndex(root)
        except UnmaskError as err:  # not a Python repository: no context, no complaint
            log.info("no repository context for %s: %s", root, err)
            return
        with self._lock:
            self.indexes[root] = index
        log.info("indexed %d files of %s", len(index.files), root)

    def _owner(self, path: Path) -> tuple[object, str] | tuple[None, None]:
        path = path.resolve()
        with self._lock:
            for root, index in self.indexes.items():
                try:
                    return index, path.relative_to(root).as_posix()
                except ValueError:
                    continue
        return None, None

    def saved(self, path: Path):
        """A file was saved: re-index it in the background."""
        if path.suffix != ".py":
            return None

        def update() -> None:
            index, rel = self._owner(path)
            if index is not None:
                try:
                    index.update(rel, path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError):
                    index.update(rel, None)
        return self._worker.submit(update)

    def context(self, path: Path | None, prefix: str, suffix: str, tokenizer,
                budget: int, document: tuple[str, str] = ("", "")) -> str:
        """Context for a hole in ``path`` (empty while indexing or outside every folder);
        ``document``: the whole buffer before and after the hole."""
        if path is None:
            return ""
        index, rel = self._owner(path)
        if index is None:
            return ""
        return index.context(prefix, suffix, tokenizer, budget, path=rel, document=document)
