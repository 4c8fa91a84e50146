"""Whether a single-line answer can be the right one: it leaves a Python file parsing (when the
file can tell), and it is no copy of the line below the hole.

A third of the embedded model's single-line answers break the syntax of a file that parses with
the right line (``for = 0``, an unclosed quote, a line at the wrong indentation: docs/
adaptation.md, stage 6). Such an answer can never be the right one, so an editor that holds the
whole file can reject it and ask the model for another decoding (``Engine.infill_stream``'s
``accept``). That needs a file that would parse with *some* line in the hole: one broken
elsewhere, or not Python at all, rejects every answer and only costs time, so
``file_can_tell`` checks first with stand-in lines.

The second rule holds in any language. A diffusion model reads the code after the hole, and a
small one often writes the line that follows it (``with lock:`` above ``with lock:``). In real
code a line is rarely its next non-blank line's twin: of 2,000 held-out corpus lines, 3 were,
counting only lines with a letter or digit (``"value4",`` in a list), so a copy is withheld or
decoded again like a line that breaks the file (``benchmarks/decode_order.py --guard``).
"""

from __future__ import annotations

import ast

from engine.scope import repeats_below

STAND_INS = ("pass", "if True:")
"""Lines put in the hole to see whether the rest of the file parses: a statement, and a block
opener for holes whose next line is indented deeper (the head of a ``for`` or ``if``)."""


def parses(text: str) -> bool:
    """Whether ``text`` is valid Python (ValueError: a NUL byte)."""
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _deeper(line: str) -> str:
    """The indentation of a block ``line`` opens: one level under it, in its own kind."""
    return _indent(line) + ("\t" if line.startswith("\t") else "    ")


def _around(before: str, after: str) -> tuple[str, str, str, str]:
    """The file around a hole's line: (the lines above it, each ending in a newline; what
    ``before`` holds of the line; what ``after`` holds of it; the lines below it)."""
    above, newline, head = before.rpartition("\n")
    tail, newline_below, below = after.partition("\n")
    return above + newline, head, tail, newline_below and below


def file_can_tell(before: str, after: str) -> bool:
    """Whether the file ``before`` + (a line) + ``after`` parses with a stand-in for the hole's
    whole line (what ``before`` holds of it after its last newline, what ``after`` holds of it
    before its first), at the indentation of the line typed so far, the line above (one level
    deeper when it opens a block) or the line below. False: the file is broken elsewhere, or
    not Python, and no answer can be judged."""
    top, head, _, rest = _around(before, after)
    indents = {_indent(head)} if head.strip() else set()
    for lines in (top.splitlines()[::-1], rest.splitlines()):
        nearest = next((line for line in lines if line.strip()), "")
        indents.add(_indent(nearest))
        if lines and nearest.rstrip().endswith(":"):  # the line above opens a block
            indents.add(_deeper(nearest))
    return any(parses(f"{top}{indent}{line}\n{rest}")
               for indent in sorted(indents) for line in STAND_INS)


def answer_fits(before: str, answer: str, after: str) -> bool:
    """Whether the file ``before`` + ``answer`` (one line, no newline) + ``after`` parses, or
    would once the block the line opens gets a body: as you type new code, a ``for ...:`` has
    no body below it yet, and the right answer must not be the one withheld."""
    if parses(before + answer + after):
        return True
    top, head, tail, rest = _around(before, after)
    line = head + answer + tail
    return line.rstrip().endswith(":") and parses(f"{top}{line}\n{_deeper(line)}pass\n{rest}")


def copies_line_below(before: str, answer: str, after: str) -> bool:
    """Whether the hole's line, ``answer`` (one line) with what ``before`` and ``after`` hold
    of its line, is the first non-blank line below it, stripped: ``engine.scope``'s suffix rule,
    so lines without a letter or digit (``)``, ``# ----``), which repeat in real code, are never
    called copies."""
    _, head, tail, below = _around(before, after)
    return repeats_below([head + answer + tail], below)


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def answer_check(before: str, after: str, shape=first_line, syntax_only: bool = False):
    """``accept`` for ``Engine.infill_stream`` on a hole between ``before`` and ``after`` (the
    whole file): is ``shape(answer)``, the text the caller inserts without its last newline, no
    copy of the line below (``copies_line_below``) and, where the file can tell
    (``file_can_tell``), does it fit (``answer_fits``). ``syntax_only``: the parse alone, None
    when the file cannot tell (the guard before the copy rule, a benchmark's baseline)."""
    tells = file_can_tell(before, after)
    if syntax_only:
        return (lambda answer: answer_fits(before, shape(answer), after)) if tells else None

    def accept(answer: str) -> bool:
        line = shape(answer)
        return not copies_line_below(before, line, after) and \
            (not tells or answer_fits(before, line, after))
    return accept
