"""Definitions of a repository's functions, classes and methods, as short stubs.

The other half of repository context next to BM25's similar code (``engine.repo``): what the
code around the cursor *uses*. A name called near the hole and defined in another file is
shown as its signature and the first line of its docstring, the way repository-level prompts
give a model the API it must call (RepoFuse, Liang et al. 2024; CrossCodeEval's "definitions"
context). Parsed with the standard ``ast`` module: the index holds saved files, which parse,
and a file that does not simply gives no stubs (its BM25 chunks are still there).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

MAX_SIGNATURE_LINES = 6
"""A header longer than this (a long argument list) is cut: the name and first lines carry it."""


@dataclass(frozen=True)
class Symbol:
    path: str
    name: str
    text: str
    """The stub: ``def``/``class`` header, the docstring's first line, ``...``."""


def _header(lines: list[str], node) -> str:
    """The source of ``node``'s ``def``/``class`` statement up to its colon (no decorators)."""
    first = node.lineno - 1
    last = max(first, node.body[0].lineno - 2) if node.body else first
    return "".join(lines[first:min(last, first + MAX_SIGNATURE_LINES - 1) + 1])


def _stub(lines: list[str], node, indent: str) -> str:
    text = _header(lines, node).rstrip("\n") + "\n"
    doc = ast.get_docstring(node, clean=True)
    body = indent + "    "
    if doc and doc.strip():
        text += f'{body}"""{doc.strip().splitlines()[0]}"""\n'
    return text + f"{body}...\n"


def file_symbols(rel: str, text: str) -> list[Symbol]:
    """Stubs of the top-level functions and classes of one file, and of its classes' methods
    (under their class's header, so ``obj.method(`` shows where ``method`` lives)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        return []
    lines = text.splitlines(keepends=True)
    out = []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, defs):
            out.append(Symbol(rel, node.name, _stub(lines, node, "")))
        elif isinstance(node, ast.ClassDef):
            init = next((m for m in node.body if isinstance(m, defs) and m.name == "__init__"),
                        None)
            head = _header(lines, node).rstrip("\n") + "\n"
            out.append(Symbol(rel, node.name, _stub(lines, node, "") if init is None
                              else head + _stub(lines, init, "    ")))
            for m in node.body:
                if isinstance(m, defs) and not m.name.startswith("__"):
                    out.append(Symbol(rel, m.name, head + _stub(lines, m, "    ")))
    return out
