"""A tiny repository with tests, for personalization and GRPO (``conftest.repo`` writes it),
and a hash to prove a run never wrote into it."""

from __future__ import annotations

import hashlib
from pathlib import Path

SHAPES = '''"""Shapes."""


def area_of_square(side):
    """Area of a square."""
    result = side * side
    return result


def perimeter_of_square(side):
    total = 4 * side
    return total
'''
CIRCLES = '''import math


def area_of_circle(radius):
    result = math.pi * radius * radius
    return result
'''
TESTS = '''from geometry.shapes import area_of_square, perimeter_of_square
from geometry.circles import area_of_circle


def test_square():
    assert area_of_square(3) == 9
    assert perimeter_of_square(2) == 8


def test_circle():
    assert round(area_of_circle(1), 2) == 3.14
'''


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()
