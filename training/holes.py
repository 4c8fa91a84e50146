"""The hole miner: editor-shaped holes in a repository's functions, verified by its own tests.

One miner for three users: personalization trains on holes of the repository's files (a line, a
block, a function body: the shapes of editor requests), ``unmask eval repo`` scores the model on
held-out files' holes, and GRPO takes its tasks from them. A hole is *test-verified* when blanking
it makes the repository's own test suite fail (run in ``engine.sandbox.RepoSandbox``, never in
the user's tree): only then does passing the suite say something about the completion
(the execution-based protocol of RepoEval, Zhang et al. 2023, and of SAFIM, Gong et al. 2024).
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

KINDS = ("line", "block", "body")


@dataclass
class Hole:
    path: str
    """File, relative to the repository root."""
    start: int
    """First line of the middle (0-based)."""
    end: int
    """Line after the middle."""
    kind: str
    """line | block | body"""
    prefix: str
    middle: str
    suffix: str

    @property
    def key(self) -> str:
        return f"{self.path}:{self.start}-{self.end}"

    def filled(self, completion: str) -> str:
        """The file with the hole filled by ``completion``."""
        if completion and not completion.endswith("\n"):
            completion += "\n"
        return self.prefix + completion + self.suffix


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _body_statements(fn) -> list[ast.stmt]:
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                             ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring stays: it is the function's specification
    return body


def _hole(rel: str, lines: list[str], start: int, end: int, kind: str) -> Hole:
    return Hole(rel, start, end, kind, "".join(lines[:start]), "".join(lines[start:end]),
                "".join(lines[end:]))


def hole_at(rel: str, text: str, start: int, end: int, kind: str) -> Hole:
    """The hole of lines ``start:end`` of one file."""
    return _hole(rel, text.splitlines(keepends=True), start, end, kind)


def shows_answer(middle: str, context: str) -> bool:
    """Whether every non-blank line of ``middle`` stands (stripped) in ``context``: a context
    that a model could copy the answer from."""
    shown = {line.strip() for line in context.splitlines()}
    lines = [line.strip() for line in middle.splitlines() if line.strip()]
    return bool(lines) and all(line in shown for line in lines)


def hole_spans(text: str, kinds: tuple[str, ...] = KINDS) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every hole of the given kinds in the functions of one file (an
    unparsable file: none); spans, not holes, as a hole holds a copy of its whole file.

    line: one whole-line statement; block: 2-4 consecutive body lines starting at a statement;
    body: a whole function body after its docstring (up to 30 lines)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines(keepends=True)
    seen, out = set(), []
    for fn in _functions(tree):
        body = _body_statements(fn)
        if not body:
            continue
        for stmt in body if ("line" in kinds or "block" in kinds) else []:
            a = stmt.lineno - 1
            if "line" in kinds and stmt.end_lineno == stmt.lineno and \
                    len(lines[a].strip()) >= 6 and lines[a].strip() not in ("pass", "..."):
                if ("line", a) not in seen:
                    seen.add(("line", a))
                    out.append((a, a + 1, "line"))
            for n in (2, 3, 4):
                b = a + n
                if "block" in kinds and b <= fn.end_lineno and ("block", a, b) not in seen and \
                        all(lines[i].strip() for i in (a, b - 1)):
                    seen.add(("block", a, b))
                    out.append((a, b, "block"))
        a, b = body[0].lineno - 1, fn.end_lineno
        if "body" in kinds and 1 <= b - a <= 30:
            out.append((a, b, "body"))
    return out


def candidate_holes(rel: str, text: str, kinds: tuple[str, ...] = KINDS) -> list[Hole]:
    """Every hole of ``hole_spans`` in one file."""
    lines = text.splitlines(keepends=True)
    return [_hole(rel, lines, a, b, kind) for a, b, kind in hole_spans(text, kinds)]


def sample_holes(holes: list[Hole], n: int, seed: int = 0) -> list[Hole]:
    """``n`` holes in a fixed pseudo-random order (the same for every run and model)."""
    ordered = sorted(holes, key=lambda h: hashlib.sha1(f"{seed}:{h.key}:{h.kind}".encode())
                     .hexdigest())
    return ordered[:n]


def require_passing(sandbox) -> None:
    """ConfigError unless the test suite passes on the unmodified copy (else no hole can be
    verified: every blanking would "fail")."""
    from engine.errors import ConfigError

    base = sandbox.run()
    if not base.passed:
        raise ConfigError(f"the test suite does not pass on the unmodified repository "
                          f"({base.status}: {base.detail}); fix it or pass --test-cmd")


def verify_holes(sandbox, holes: list[Hole], want: int, progress=None) -> list[Hole]:
    """The first ``want`` holes whose blanking makes the test suite fail. The suite must pass
    on the unmodified copy first (``require_passing``)."""
    require_passing(sandbox)
    kept: list[Hole] = []
    for n, hole in enumerate(holes, 1):
        if not sandbox.run({hole.path: hole.prefix + hole.suffix}).passed:
            kept.append(hole)
        if progress is not None:
            progress(n, len(holes), len(kept))
        if len(kept) >= want:
            break
    return kept


def mine(sandbox, files: dict[str, str], wants: dict[str, int], progress=None) -> list[Hole]:
    """Test-verified holes of ``files`` ({relative path: text}): per kind, the first ``want``
    verified among 4 x ``want`` sampled candidates. ``progress(label, done, total, kept)``."""
    found: list[Hole] = []
    for kind, want in wants.items():
        cands = [h for rel, text in files.items() for h in candidate_holes(rel, text, (kind,))]
        label = f"verifying {kind} holes"
        found += verify_holes(sandbox, sample_holes(cands, 4 * want), want,
                              (lambda n, t, k, lab=label: progress(lab, n, t, k))
                              if progress else None)
    return found


def save_holes(path: Path, holes: list[Hole]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(h)) + "\n" for h in holes))


def load_holes(path: Path) -> list[Hole]:
    return [Hole(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
