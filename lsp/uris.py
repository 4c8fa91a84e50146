"""Local paths of the editor's URIs."""

from __future__ import annotations

from pathlib import Path


def file_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI, else None (untitled buffers, remote schemes)."""
    from pygls.uris import to_fs_path

    if not uri.startswith("file:"):
        return None
    path = to_fs_path(uri)
    return Path(path) if path else None
