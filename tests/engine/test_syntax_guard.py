"""The syntax guard: whether a file can judge an answer, and the engine's retries."""

from __future__ import annotations

import pytest

from engine.api import Completion, Frame, GenerationSettings
from engine.errors import ConfigError
from engine.syntax_guard import file_can_tell, parses

FILE = "def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n"


def cut(line: int, col: int = 0) -> tuple[str, str]:
    """(before, after) of FILE with line ``line`` (0-based) removed from column ``col`` on."""
    lines = FILE.splitlines(keepends=True)
    return "".join(lines[:line]) + lines[line][:col], "\n" + "".join(lines[line + 1:])


def test_a_file_that_parses_around_the_hole_can_tell_statement_and_block_opener_lines():
    assert file_can_tell(*cut(1)) and file_can_tell(*cut(4))  # statements
    assert file_can_tell(*cut(2))  # `for x in xs:` — its body follows, indented deeper
    assert file_can_tell(*cut(3, col=10))  # mid-line: `        to|tal += x`
    assert file_can_tell("", "\nx = 1\n")  # the first line of a file


def test_a_file_broken_elsewhere_or_not_python_cannot_tell():
    before, after = cut(1)
    assert not file_can_tell(before, after + "    if (:\n")
    assert not file_can_tell("<html>\n  <body>\n", "\n  </body>\n</html>\n")
    assert not file_can_tell("SELECT a,\n", "\nFROM t WHERE;\n")


def test_parses_says_no_to_a_nul_byte_instead_of_raising():
    assert parses(FILE) and not parses("x = 1\x00\n") and not parses("for = 0\n")


def test_a_rejected_answer_is_decoded_again_in_the_alternative_orders(tiny_engine):
    settings = GenerationSettings(max_new_tokens=8, steps=8, length="fixed", retries=2)
    alternatives = tiny_engine.alternatives(settings)
    assert [(a.alg, a.block_length, a.temperature, a.seed) for a in alternatives] == \
        [("entropy", 1, 0.0, 0), (settings.alg, settings.block_length, 0.6, 1)]
    assert tiny_engine.alternatives(GenerationSettings()) == []  # the default only judges
    with pytest.raises(ConfigError, match="--retries must be 0, 1 or 2"):
        GenerationSettings(retries=3)

    plain = tiny_engine.infill("def f(x):\n", "\n", settings)
    assert "tries" not in plain.extra  # no accept: one decoding, as before
    seen: list[str] = []

    def reject_all(text: str) -> bool:
        seen.append(text)
        return False

    items = list(tiny_engine.infill_stream("def f(x):\n", "\n", settings, accept=reject_all))
    done = items[-1]
    assert isinstance(done, Completion) and len(seen) == 3
    assert (done.extra["tries"], done.extra["accepted"]) == (3, False)
    assert done.completion == plain.completion == seen[0]  # none accepted: the first answer
    assert sum(isinstance(i, Frame) for i in items) == 3 * 8  # every try streams its steps
    assert done.extra["forward_passes"] == 3 * plain.extra["forward_passes"]

    seen.clear()
    second = tiny_engine.infill("def f(x):\n", "\n", settings,
                                accept=lambda text: seen.append(text) or len(seen) == 2)
    assert (second.extra["tries"], second.extra["accepted"]) == (2, True)
    assert second.completion == seen[1]
    left_to_right = tiny_engine.infill("def f(x):\n", "\n", alternatives[0])
    assert second.completion == left_to_right.completion


def test_a_block_opener_typed_before_its_body_fits():
    from engine.syntax_guard import answer_fits

    before = "def f(xs):\n    total = 0\n    for x in "
    assert answer_fits(before, "xs:", "\n")  # new code: the body is not written yet
    assert answer_fits(before, "xs:", "\n        total += x\n")  # the body is below
    assert not answer_fits(before, "xs", "\n")  # no colon: broken whatever comes next
    assert not answer_fits("def f(xs):\n    ", "for = 0", "\n    return xs\n")
    assert answer_fits("x = 1\n", "y = (", "\n") is False  # an open bracket is not a block


def test_a_copy_of_the_line_below_the_hole_is_rejected_in_any_file():
    from engine.syntax_guard import answer_check, copies_line_below

    before = "def f(lock):\n    nonlocal hits\n    "
    after = "\n\n    with lock:\n        hits += 1\n"
    assert copies_line_below(before, "with lock:", after)  # blank lines between do not hide it
    assert not copies_line_below(before, "with other:", after)
    assert copies_line_below(before + "with ", "lock:", after)  # the whole line counts
    assert not copies_line_below("x = [\n", ")", "\n)\n")  # no letter or digit: real code repeats
    assert not copies_line_below("", "x = 1", "")  # nothing below
    accept = answer_check(before, after)
    assert not accept("with lock:\n") and accept("hits = 0\n")
    # the parse alone (a benchmark's baseline) takes the copy, which parses
    assert answer_check(before, after, syntax_only=True)("with lock:\n")
    # a file that is not Python cannot judge syntax, but a copy is still one
    html = answer_check("<ul>\n  ", "\n  <li>a</li>\n</ul>\n")
    assert not html("<li>a</li>") and html("<li>b</li>")
    assert answer_check("<ul>\n  ", "\n  <li>a</li>\n</ul>\n", syntax_only=True) is None
