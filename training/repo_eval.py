"""``unmask eval repo``: the repo-hole benchmark.

Held-out files (``--exclude``: never trained on, never retrieved) give test-verified holes
(``training.holes``): single lines, and blocks of 2-4 lines. Each is filled as an editor would
ask for it (the caller's ``Request``: the front ends' context windows and fast decoding,
``assistant.requests``) and scored by running the repository's own suite on a temporary copy
(``engine.sandbox.RepoSandbox``): pass@1, plus exact match against the removed lines. Results
are cached by completion text, so equal answers cost one test run, and answers whose verdict is
known without a run (the removed lines themselves, a file that no longer parses) cost none.
Answers persist across runs (``AnswerCache``): a rerun that scores the same model on the same
holes (the base rows of every benchmark rerun) decodes nothing again.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from engine.errors import ConfigError
from engine.pool import complete
from engine.repo import RETRIEVAL, RepoIndex, context_budget, python_files
from engine.syntax_guard import parses
from training.holes import Hole, load_holes, require_passing, save_holes, shows_answer
from training.holes import mine as mine_holes


SOURCES = ("other files", "same file", "nowhere")
"""Where a hole's removed lines already occur, each one verbatim (stripped): in the files that
personalization and retrieval read (``other files``), else elsewhere in the hole's own file,
else ``nowhere``. What learning the repository can teach by rote is bounded by the first."""


@dataclass
class Benchmark:
    repo: Path
    exclude: list[str]
    held_out: list[str]
    """The files the holes come from."""
    holes: dict[str, list[Hole]]
    """kind (line | block) -> verified holes."""
    seen_lines: frozenset[str] = frozenset()
    """The stripped lines of the files that are not held out (what training reads)."""

    def source(self, hole: Hole) -> str:
        """The hole's ``SOURCES`` bucket."""
        lines = [line.strip() for line in hole.middle.splitlines() if line.strip()]
        if all(line in self.seen_lines for line in lines):
            return SOURCES[0]
        return SOURCES[1] if shows_answer(hole.middle, hole.prefix + hole.suffix) else SOURCES[2]


def held_out_files(repo: Path, exclude: list[str]) -> list[str]:
    if not exclude:
        raise ConfigError("eval repo needs --exclude FILE_OR_GLOB: the held-out files whose "
                          "holes are scored (never trained on, never retrieved)")
    kept = {p.as_posix() for p in python_files(repo, exclude)}
    return sorted(p.as_posix() for p in python_files(repo) if p.as_posix() not in kept)


def mine(repo: Path, exclude: list[str], sandbox, n_line: int = 60, n_block: int = 30,
         cache: Path | None = None, progress=None) -> Benchmark:
    """Verified holes of the held-out files (cached by the files' content and the test command)."""
    held = held_out_files(repo, exclude)
    texts = {rel: (repo / rel).read_text(encoding="utf-8") for rel in held}
    require_passing(sandbox)
    everything = {p.as_posix(): (repo / p).read_bytes().decode("utf-8", "replace")
                  for p in python_files(repo)}
    key = hashlib.sha256("\0".join([*exclude, " ".join(sandbox.argv[1:]), str(n_line),
                                    str(n_block)] + list(everything.values())).encode())
    cached = cache / f"{key.hexdigest()[:16]}.jsonl" if cache else None
    if cached is not None and cached.exists():
        all_holes = load_holes(cached)
    else:
        all_holes = mine_holes(sandbox, texts, {"line": n_line, "block": n_block}, progress)
        if cached is not None:
            save_holes(cached, all_holes)
    by_kind = {k: [h for h in all_holes if h.kind == k] for k in ("line", "block")}
    if not any(by_kind.values()):
        raise ConfigError(f"no hole in {', '.join(held)} makes the test suite fail when blanked; "
                          "hold out files that the tests cover")
    # the lines training reads: those of every file that is not held out
    seen = frozenset(line.strip() for rel, text in everything.items() if rel not in held
                     for line in text.splitlines())
    return Benchmark(repo, exclude, held, by_kind, seen)


Request = Callable[[object, Hole], tuple[str, str, object]]
"""``request(engine, hole) -> (prefix, suffix, settings)``: how an editor would ask for the hole
(a single-line suggestion for ``line`` holes, an explicit block request for ``block`` ones)."""

Decode = Callable[[Iterable[tuple]], Iterator[str]]
"""``decode(requests) -> completion texts``, in order; a request is (prefix, suffix, settings,
context)."""


class _NoOpStrings(ast.NodeTransformer):
    def visit_Expr(self, node: ast.Expr):
        # a bare string statement (a docstring, an attribute's docstring) does nothing
        is_text = isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        return None if is_text else node


def code_fingerprint(folder: Path) -> str:
    """A hash of the Python files in ``folder`` as the interpreter runs them: their syntax
    trees without comments, docstrings or layout, so that editing the engine's documentation
    keeps the answers it gave (an edit that changes what runs still drops them)."""
    code = hashlib.sha256()
    for f in sorted(folder.glob("*.py")):
        tree = _NoOpStrings().visit(ast.parse(f.read_text(encoding="utf-8")))
        code.update(f"{f.name}\0{ast.dump(tree)}\0".encode())
    return code.hexdigest()


class AnswerCache:
    """The model's answers to earlier requests, kept on disk (one JSONL file per model). An
    answer is a function of the weights, the engine's code, its back end and dtype, the threads
    a decode runs on (a bf16 sum rounds differently on one thread than on two: 2 of 360
    answers differed, ``engine.pool``), and the request (prefix, suffix, context, settings:
    greedy, or sampled from the settings' seed), so the key is a hash of all of them and a hit
    is the answer the engine would give again."""

    def __init__(self, folder: Path, engine, threads: int) -> None:
        import engine as engine_package
        from training.pretrain import origin_of

        model_origin = origin_of(Path(engine.folder))
        code = code_fingerprint(Path(engine_package.__file__).parent)
        parent = engine.parent_folder  # the rerank's judge, when the settings ask for it
        self.salt = json.dumps([model_origin, code, engine.backend, str(engine.dtype),
                                engine.device.type, origin_of(parent) if parent else None,
                                threads])
        self.path = folder / f"{model_origin}.jsonl"
        self.answers: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = row["text"]
                except (ValueError, KeyError, TypeError):  # a line cut by a kill: ask again
                    continue
        self.hits = self.misses = 0

    def key(self, prefix: str, suffix: str, context: str, settings) -> str:
        request = json.dumps([self.salt, prefix, suffix, context, repr(settings)])
        return hashlib.sha256(request.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        text = self.answers.get(key)
        self.hits += text is not None
        self.misses += text is None
        return text

    def put(self, key: str, text: str) -> None:
        self.answers[key] = text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "text": text}) + "\n")


def ask(engine, hole: Hole, index: RepoIndex | None, request: Request) -> tuple:
    """The request an editor sends for ``hole``: (prefix, suffix, settings, context)."""
    prefix, suffix, settings = request(engine, hole)
    context = index.context(prefix, suffix, engine.tokenizer, context_budget(engine.context),
                            path=hole.path, document=(hole.prefix, hole.suffix)
                            ) if index else ""
    return prefix, suffix, settings, context


def in_process(engine) -> Decode:
    """``Decode`` on ``engine`` itself, one request after another."""
    return lambda asked: (complete(engine, request) for request in asked)


def answers_for(engine, holes: list[Hole], index: RepoIndex | None, request: Request,
                answers: AnswerCache | None = None, decode: Decode | None = None,
                asked: list[tuple] | None = None) -> Iterator[str]:
    """The model's text for each hole, in order: the first line for single-line holes (an
    editor's single-line completion), the whole canvas for blocks. Kept answers are reused;
    the rest go to ``decode`` (default: ``engine`` in this process) and are kept. ``asked``:
    the holes' requests when the caller built them already (``ask``)."""
    asked = asked or [ask(engine, hole, index, request) for hole in holes]
    keys = [answers.key(p, s, c, st) if answers else "" for p, s, st, c in asked]
    known = [answers.get(k) if answers else None for k in keys]
    decoded = (decode or in_process(engine))(
        [a for a, text in zip(asked, known) if text is None])
    for hole, key, text in zip(holes, keys, known):
        if text is None:
            text = next(decoded)
            if answers:
                answers.put(key, text)
        yield text.split("\n", 1)[0] + "\n" if hole.kind == "line" else text


def known_outcome(hole: Hole, middle: str) -> bool | None:
    """The verdict of the test suite when it needs no run, else None: the file with the removed
    lines put back is the file the suite passed on when the hole was verified, and a file that
    no longer parses fails (a verified hole's file is imported by the tests, or blanking it
    would not have failed them)."""
    filled = hole.filled(middle)
    if filled == hole.filled(hole.middle):
        return True
    return None if parses(filled) else False


def by_source(records: list[dict]) -> dict:
    """{(kind, source): {"n": holes, config: passed, ...}} from ``score``'s records."""
    table = _grouped(records, "source")
    return dict(sorted(table.items(), key=lambda kv: (kv[0][0] != "line",
                                                       SOURCES.index(kv[0][1]))))


def by_shown(records: list[dict]) -> dict:
    """{(kind, shown): {"n": holes, config: passed, ...}} over the configurations with context:
    whether the request's context showed the removed lines (``shows_answer``) splits what
    retrieval missed from what the model failed to copy."""
    table = _grouped([r for r in records if r.get("shown") is not None], "shown")
    return dict(sorted(table.items(), key=lambda kv: (kv[0][0] != "line", not kv[0][1])))


def _grouped(records: list[dict], field: str) -> dict:
    table: dict = {}
    for r in records:
        row = table.setdefault((r["kind"], r[field]), {"n": 0})
        row[r["config"]] = row.get(r["config"], 0) + r["passed"]
        row["n"] += r["config"] == records[0]["config"]  # each hole once: the first config's
    return table


def score(engine, bench: Benchmark, sandbox, with_context: bool, request: Request,
          progress=None, label: str = "", records: list | None = None,
          retrieval: str = RETRIEVAL, answers: AnswerCache | None = None,
          verdicts: dict | None = None, decode: Decode | None = None) -> dict:
    """pass@1 and exact match per hole kind for one (model, context) configuration; one record
    per hole is appended to ``records`` when given; ``answers``: reuse and keep the model's
    answers across runs; ``verdicts``: the suite's verdict per (hole, answer), shared by the
    configurations of one run (the same answer to the same hole is one test run, whichever
    model wrote it); ``decode``: how answers not kept are decoded (default: ``engine`` here,
    one after another; ``engine.pool.InfillPool.map``: by worker processes, while this process
    runs the suite on the answers that came back)."""
    index = RepoIndex(bench.repo, bench.exclude, retrieval) if with_context else None
    results: dict = {}
    seen: dict[tuple[str, str], bool] = {} if verdicts is None else verdicts
    for kind, holes in bench.holes.items():
        passed = exact = done = 0
        asked = [ask(engine, hole, index, request) for hole in holes]
        for hole, middle, (*_, context) in zip(holes, answers_for(
                engine, holes, index, request, answers, decode, asked), asked):
            key = (hole.key, middle)
            if key not in seen:
                known = known_outcome(hole, middle)
                seen[key] = known if known is not None else \
                    sandbox.run({hole.path: hole.filled(middle)}).passed
            passed += seen[key]
            exact += middle.strip() == hole.middle.strip()
            done += 1
            if records is not None:
                records.append({"config": label, "hole": hole.key, "kind": kind,
                                "source": bench.source(hole), "completion": middle,
                                "reference": hole.middle, "passed": seen[key],
                                "shown": shows_answer(hole.middle, context)
                                if with_context else None})
            if progress is not None:  # a phase per kind: a block costs several lines' time
                progress(f"{label}, {kind}s", done, len(holes), passed)
        n = len(holes)
        results[kind] = {"n": n, "pass@1": round(passed / n, 4) if n else 0.0,
                         "exact": round(exact / n, 4) if n else 0.0}
    return results
