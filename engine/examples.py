"""The ``>>>`` examples in the docstring of the function being written, run against a body.

A developer who writes a docstring with doctest examples has written the function's first
tests. Of several candidate bodies (``engine.rerank``), one that passes them is likelier right
than the one the parent's likelihood prefers: AlphaCode (Li et al. 2022) filters its samples by
the problem's example tests, CodeT (Chen et al. 2022) by tests the model writes. A candidate is
checked as the file before it, the body, and a doctest runner over those examples, in
``engine.sandbox`` (a child process in a temporary directory, with time and memory limits),
never in this process; a file that cannot run there (an import only the user's environment
has) fails every candidate alike, so the order is then the parent's.
"""

from __future__ import annotations

import ast
import doctest
import re
import textwrap

from engine.sandbox import run_python

_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]", re.MULTILINE)
_QUOTES = re.compile(r"^[ \t]+[rRuU]?(\"\"\"|\'\'\')")


def docstring(definition: str) -> str:
    """The docstring (cleaned, as ``ast.get_docstring``) of the function whose ``def`` starts
    ``definition`` and whose body has not begun, "" when it has none or does not parse. The
    body's indentation is the docstring line's own."""
    source = textwrap.dedent(definition).rstrip()
    quoted = [line for line in source.split("\n")[1:] if _QUOTES.match(line)]
    if not quoted:
        return ""
    indent = quoted[0][:len(quoted[0]) - len(quoted[0].lstrip())]
    try:
        tree = ast.parse(f"{source}\n{indent}pass\n")
    except SyntaxError:
        return ""
    node = tree.body[-1] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) != 2:
        return ""  # not a function, or its body has begun: the docstring and our ``pass`` only
    return ast.get_docstring(node) or ""


def prompt_examples(prefix: str) -> str:
    """The docstring of the last function definition in ``prefix`` when it holds ``>>>``
    examples and ``prefix`` ends before its body, else "": only a whole body can be checked
    (the rest of a body begun above the cursor, or written below it, is not in the check)."""
    starts = [m.start() for m in _DEF.finditer(prefix)]
    text = docstring(prefix[starts[-1]:]) if starts else ""
    try:
        found = doctest.DocTestParser().get_examples(text)
    except ValueError:  # a malformed example (inconsistent indentation): nothing to check
        return ""
    return text if found else ""


def check_program(prefix: str, body: str, examples: str) -> str:
    """The file up to the cursor, the body, then a doctest run of ``examples`` that exits 0
    only when every example passes (whitespace differences in output forgiven)."""
    return (f"{prefix}{body}\n\n\n"
            "import doctest as _doctest, sys as _sys\n"
            f"_test = _doctest.DocTestParser().get_doctest({examples!r}, dict(globals()), "
            "'examples', None, 0)\n"
            "_runner = _doctest.DocTestRunner(optionflags=_doctest.NORMALIZE_WHITESPACE)\n"
            "_runner.run(_test, out=lambda _s: None)\n"
            "_sys.exit(1 if _runner.failures or not _runner.tries else 0)\n")


def passes_examples(prefix: str, body: str, examples: str, timeout_s: float = 5.0) -> bool:
    """Whether ``body`` after ``prefix`` passes every one of ``examples`` (``prompt_examples``),
    run in the sandbox."""
    return run_python(check_program(prefix, body, examples), timeout_s=timeout_s).passed
