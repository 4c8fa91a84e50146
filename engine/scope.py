"""Where a multi-line infill ends: the hole's indentation scope, and the suffix's first lines.

A diffusion canvas is sized before the text is known (``length`` adaptive or fixed), so a
block request's canvas is often longer than the hole. The model then goes on past it: it writes
the lines the suffix already holds, or leaves the block it was asked for and starts the next
function, and the file breaks. Editors' completion engines cut such text after the fact; the
first two rules are those of Tabby's post-processing (``limitScopeByIndentation``,
``removeDuplicateSuffixLines``), written for an infill that sees both sides:

* scope: the completion may not leave the indentation block it starts in. At the start of a
  line, its level is the completion's first line's; deeper than the prefix's last line means a
  new block's body, and a line back at the prefix's level ends it. Mid-line, the statement being
  written ends at the next line not deeper than the current one. One closing line (at a lower
  level) is kept when the suffix itself continues lower still, as when a hole ends a block.
* suffix: the completion ends where its lines start repeating the suffix's first lines.
* unfinished: a canvas that ran out before the model wrote an end token stops mid-statement;
  its last line is dropped when a whole line comes before it.

Text is cut at line starts only, so what is kept is a prefix of what the model wrote.
"""

from __future__ import annotations

SUFFIX_LINES = 2
"""Suffix lines the completion must repeat (as far as it goes) before it is cut there: one
short line (``return x``) can be a real part of the hole."""


def _indent(line: str) -> int:
    return len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())


def _nonblank(lines: list[str]) -> list[str]:
    return [line for line in lines if line.strip()]


def _scope_end(lines: list[str], head: str, prefix: str, after: list[str]) -> int:
    """The number of completion lines inside the hole's indentation scope (``head``: the
    cursor's line before it; ``after``: the suffix's non-blank lines below the cursor's)."""
    before = _nonblank(prefix.split("\n")[:-1]) if not head.strip() else [head]
    if not before:
        return len(lines)
    level = _indent(before[-1])
    first = next((n for n, line in enumerate(lines) if (head + line if n == 0 else line)
                  .strip()), None)
    if first is None:
        return len(lines)
    start = _indent(head + lines[0] if first == 0 else lines[first])
    if head.strip():  # mid-line: the statement ends at the next line not deeper than its own
        limit = level + 1
    else:  # a new block's body (deeper) or statements at the first line's level
        limit = level + 1 if start > level else start
    suffix_level = _indent(after[0]) if after else 0
    for n in range(first + 1, len(lines)):
        line = lines[n]
        if not line.strip() or _indent(line) >= limit:
            continue
        # a closing line (a hole that ends its block) stays when the suffix goes on lower
        closing = suffix_level < _indent(line) and lines[n - 1].strip()
        return n + 1 if closing else n
    return len(lines)


def _suffix_start(lines: list[str], after: list[str]) -> int:
    """The first completion line from which the completion repeats the suffix's first
    non-blank lines (compared without indentation); ``len(lines)`` when it never does."""
    want = [line.strip() for line in after[:SUFFIX_LINES]]
    if not want or not any(c.isalnum() for c in want[0]):
        return len(lines)
    for n, line in enumerate(lines):
        if line.strip() != want[0]:
            continue
        rest = [line.strip() for line in _nonblank(lines[n:])]
        if rest[:len(want)] == want[:len(rest)]:
            return n
    return len(lines)


def repeats_below(lines: list[str], below: str) -> bool:
    """Whether ``lines`` repeat the first non-blank lines of ``below``, the text under them, as
    far as they go: the suffix rule, for a caller that judges whole lines (a single-line
    answer: ``engine.syntax_guard.copies_line_below``)."""
    return bool(lines) and _suffix_start(lines, _nonblank(below.split("\n"))) == 0


def _head_after(prefix: str, suffix: str) -> tuple[str, list[str]]:
    """The cursor's line before the hole, and the suffix's non-blank lines below it."""
    head = prefix.rsplit("\n", 1)[-1]
    below = suffix.split("\n")
    # mid-line, the suffix's first line is the rest of the cursor's line, not a line below it
    return head, _nonblank(below[1:] if head.strip() else below)


def limit_scope(text: str, prefix: str, suffix: str, unfinished: bool = False) -> str:
    """``text`` cut at the first line that leaves the hole's scope or repeats the suffix;
    ``unfinished``: the canvas ran out (no end token), so a last partial line goes too."""
    lines = text.split("\n")
    if unfinished and len(lines) > 1 and lines[-1].strip():
        lines[-1] = ""  # "a\nb\npart" -> "a\nb\n"
    head, after = _head_after(prefix, suffix)
    keep = min(_scope_end(lines, head, prefix, after), _suffix_start(lines, after))
    if keep >= len(lines):
        return "\n".join(lines)
    return "".join(line + "\n" for line in lines[:keep])


def scope_settled(start: str, prefix: str, suffix: str) -> bool:
    """Whether ``limit_scope`` will cut the completion inside ``start``, the text of its first
    committed tokens, whatever the model writes after it. A decoder can stop then: the rest of
    the canvas would be cut. Committed tokens never change, and the rules read only complete
    lines: the scope's end is the first line that leaves it, and a repetition of the suffix
    before that end is decided once ``SUFFIX_LINES`` lines of it are complete."""
    lines = start.split("\n")[:-1]  # the last, partial line can still change
    head, after = _head_after(prefix, suffix)
    end = _scope_end(lines, head, prefix, after)
    if end >= len(lines):
        return False
    repeat = _suffix_start(lines, after)  # the first start that matches as far as it goes
    return repeat >= end or len(_nonblank(lines[repeat:])) >= min(SUFFIX_LINES, len(after))
