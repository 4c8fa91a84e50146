"""Planning model edits on a source text: "generate body" and "fill selection".

Shared by the language server's code actions and the TUI so both replace exactly the same
span and post-process the model's text the same way. Offsets are indices into the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from assistant.syntax import FunctionInfo, function_at
from engine.examples import prompt_examples


@dataclass
class EditPlan:
    start: int
    end: int
    prefix: str
    suffix: str
    title: str
    function: FunctionInfo | None = None
    leading_newline: bool = False
    """The body goes after a docstring on the same line: start it on a new line."""

    @property
    def examples(self) -> str:
        """The ``>>>`` examples of the docstring of the function whose body this writes ("" for
        a selection, or a docstring without them): what "checked by its examples" runs."""
        return prompt_examples(self.prefix) if self.function is not None else ""

    def finish(self, completion: str) -> str:
        """The text that replaces [start, end) once the model has written ``completion``."""
        if self.function is None:
            return completion
        body = cut_body(completion, self.function.indent).rstrip("\n")
        if not body.strip():
            return ""
        return ("\n" + body) if self.leading_newline else body


def offset_of(text: str, line: int, col: int) -> int:
    lines = text.splitlines(keepends=True)
    return sum(len(l) for l in lines[:line]) + col


def plan_body(source: str, line: int) -> EditPlan | None:
    """Replace the trivial body (``pass`` / ``...``) of the function at ``line``; None if there is
    no function there or its body already has code."""
    fn = function_at(source, line)
    if fn is None or not fn.body_empty:
        return None
    (r0, c0), (r1, c1) = fn.body_start, fn.body_end
    only_docstring = (r0, c0) == (r1, c1)
    lines = source.splitlines()
    if not only_docstring and not lines[r0][:c0].strip():
        c0 = 0  # the model writes the indentation itself
    start, end = offset_of(source, r0, c0), offset_of(source, r1, c1)
    prefix = source[:start] + ("\n" if only_docstring else "")
    return EditPlan(start, end, prefix, source[end:], f"generate body of {fn.name}", fn,
                    only_docstring)


def plan_selection(source: str, start: int, end: int) -> EditPlan:
    return EditPlan(start, end, source[:start], source[end:], "fill selection")


def cut_body(text: str, indent: str) -> str:
    """The generated body: lines until one is not indented deeper than the ``def`` (the body
    ended). A model that wrote an unindented body gets it indented one level under the ``def``."""
    lines = text.splitlines(keepends=True)
    first = next((l for l in lines if l.strip()), "")
    if first and len(first) - len(first.lstrip()) <= len(indent):
        lines = [indent + "    " + l if l.strip() else l for l in lines]
    out = []
    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
            break
        out.append(line)
    body = "".join(out).rstrip()
    return body + "\n" if body else ""
