"""Degenerate loops in generated text: one definition for the decoding rule and the metric.

A small model decoding greedily falls into loops: ``1, 1, 1, 1, ...``, ``Sum, Sum, Sum, ...``,
or the same comment line again and again. A loop here is a unit of 2-80 characters with a letter
or digit in it, four or more times in a row: ``))))`` and indentation are not loops, and a unit as
long as a line catches repeated lines. ``GenerationSettings.stop_loops`` ends denoising once the
settled text holds one and keeps the text up to the end of the unit's first copy (editors do the
same after the fact: Tabby's ``removeRepetitiveLines``); ``unmask eval`` counts the records that
hold one.
"""

from __future__ import annotations

import re

LOOP = re.compile(r"(.{2,80}?)\1{3,}", re.DOTALL)


def find_loop(text: str) -> re.Match | None:
    """The first loop in ``text`` (its ``group(1)`` is the repeated unit), or None."""
    for m in LOOP.finditer(text):
        if any(c.isalnum() for c in m.group(1)):
            return m
    return None


def cut_loop(text: str) -> str:
    """``text`` up to the end of the first copy of its first loop (unchanged without one)."""
    m = find_loop(text)
    return text if m is None else text[:m.start() + len(m.group(1))]
