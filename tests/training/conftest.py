"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .repos import CIRCLES, SHAPES, TESTS


@pytest.fixture
def repo(tmp_path) -> Path:
    """The repository (geometry package, its tests, an ignored generated/ folder)."""
    root = tmp_path / "repo"
    (root / "geometry").mkdir(parents=True)
    (root / "geometry" / "__init__.py").write_text("")
    (root / "geometry" / "shapes.py").write_text(SHAPES)
    (root / "geometry" / "circles.py").write_text(CIRCLES)
    (root / "tests").mkdir()
    (root / "tests" / "test_geometry.py").write_text(TESTS)
    (root / "generated").mkdir()
    (root / "generated" / "junk.py").write_text("def junk():\n    return 1\n")
    (root / ".gitignore").write_text("generated/\n")
    return root
