"""Python syntax facts the editors need, from tree-sitter: functions, empty bodies, block starts.

Used by the language server (single- vs multi-line completion, "generate body" code action) and
the TUI (function under the cursor). Lines and columns are 0-based; columns are in characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

BLOCK_OPENERS = {"function_definition", "class_definition", "if_statement", "for_statement",
                 "while_statement", "with_statement", "try_statement", "elif_clause",
                 "else_clause", "except_clause", "finally_clause", "match_statement",
                 "case_clause"}


@lru_cache(maxsize=1)
def _parser():
    try:
        import tree_sitter_python
        from tree_sitter import Language, Parser
    except ImportError as err:
        from engine.errors import ConfigError

        raise ConfigError("tree-sitter is not installed; pip install 'unmask[lsp]'") from err
    return Parser(Language(tree_sitter_python.language()))


def parse(source: str):
    return _parser().parse(source.encode("utf-8"))


@dataclass
class FunctionInfo:
    name: str
    start_line: int
    end_line: int
    header: str
    """Decorators + the ``def`` line(s) through the colon, as written."""
    docstring: str | None
    body_start: tuple[int, int]
    """(line, col) where the statements after the docstring start (or where they would)."""
    body_end: tuple[int, int]
    body_empty: bool
    """Body is only a docstring, ``pass`` and/or ``...``."""
    indent: str


def _text(node, src: bytes) -> str:
    return src[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _is_trivial(stmt, src: bytes) -> bool:
    if stmt.type == "pass_statement":
        return True
    if stmt.type == "expression_statement" and stmt.named_child_count == 1:
        child = stmt.named_children[0]
        return child.type == "ellipsis" or child.type == "string"
    return False


def _char_col(lines: list[str], row: int, byte_col: int) -> int:
    return len(lines[row].encode("utf-8")[:byte_col].decode("utf-8", "replace")) \
        if row < len(lines) else 0


def functions(source: str) -> list[FunctionInfo]:
    src = source.encode("utf-8")
    lines = source.splitlines()
    out: list[FunctionInfo] = []
    stack = [parse(source).root_node]
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.children))
        if node.type != "function_definition":
            continue
        body = node.child_by_field_name("body")
        if body is None:
            continue
        outer = node.parent if node.parent is not None and \
            node.parent.type == "decorated_definition" else node
        header = src[outer.start_byte:body.start_byte].decode("utf-8", "replace").rstrip()
        stmts = [c for c in body.named_children if c.type != "comment"]
        doc = None
        rest = stmts
        if stmts and stmts[0].type == "expression_statement" and \
                stmts[0].named_child_count == 1 and stmts[0].named_children[0].type == "string":
            doc = _text(stmts[0], src)
            rest = stmts[1:]
        first_after_doc = rest[0] if rest else None
        if first_after_doc is not None:
            b0 = first_after_doc.start_point
        elif doc is not None:
            b0 = stmts[0].end_point
        else:
            b0 = body.start_point
        row0 = b0[0] if isinstance(b0, tuple) else b0.row
        col0 = b0[1] if isinstance(b0, tuple) else b0.column
        end = body.end_point
        row1 = end[0] if isinstance(end, tuple) else end.row
        col1 = end[1] if isinstance(end, tuple) else end.column
        start = node.start_point
        srow = start[0] if isinstance(start, tuple) else start.row
        name_node = node.child_by_field_name("name")
        line = lines[srow] if srow < len(lines) else ""
        out.append(FunctionInfo(
            name=_text(name_node, src) if name_node else "?", start_line=srow, end_line=row1,
            header=header, docstring=doc,
            body_start=(row0, _char_col(lines, row0, col0)),
            body_end=(row1, _char_col(lines, row1, col1)),
            body_empty=all(_is_trivial(s, src) for s in rest), indent=line[:len(line) - len(line.lstrip())]))
    return out


def function_at(source: str, line: int) -> FunctionInfo | None:
    """The innermost function whose lines contain ``line``."""
    best = None
    for f in functions(source):
        if f.start_line <= line <= f.end_line and (best is None or f.start_line >= best.start_line):
            best = f
    return best


def opens_block(source: str, line: int) -> bool:
    """Does the last non-blank line before ``line`` end with a block-opening colon?"""
    lines = source.splitlines()
    row = min(line, len(lines)) - 1
    while row >= 0 and not lines[row].strip():
        row -= 1
    if row < 0:
        return False
    tree = parse(source)
    text = lines[row].rstrip()
    col = len(text.encode("utf-8")) - 1
    node = tree.root_node.descendant_for_point_range((row, col), (row, col + 1))
    while node is not None and node.type == "comment":
        return False
    return node is not None and node.type == ":" and node.parent is not None and \
        node.parent.type in BLOCK_OPENERS


def completion_mode(source: str, line: int, col: int) -> str:
    """'multi' on a blank line that starts a block or sits in an empty function body, else 'single'."""
    lines = source.splitlines() or [""]
    current = lines[line] if line < len(lines) else ""
    if current[:col].strip() or current[col:].strip():
        return "single"
    if opens_block(source, line):
        return "multi"
    fn = function_at(source, line)
    return "multi" if fn is not None and fn.body_empty else "single"
