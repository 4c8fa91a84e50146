"""Reusing keys across editor requests (``reuse_context``) against the editor default without it,
side by side in one run.

    .venv/bin/python benchmarks/context_reuse.py [--model M] [--lines 6] [--modes ...]

A developer retypes real lines of this repository's own files character by character, cursor
at the end of what is typed, the rest of the file after it. Every keystroke makes the request
the language server makes (``engine.window.build_infill`` with the server's default window of
384 prefix and 128 suffix tokens, single-line canvas of 24 slots, adaptive length, stop after
the line). Each mode answers every keystroke, modes interleaved keystroke by keystroke so both
see the same machine state; reuse keeps its own keys from its own previous request. Printed per
mode: median and p90 engine time per request, positions computed in full passes per request,
share of requests that reused keys, and the share of completions identical to the exact
decoding (everything recomputed every pass) and to the mode without reuse.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "exact": {"cache_refresh": 0},
    "cache 8": {"cache_refresh": 8},
    "cache 8 + reuse": {"cache_refresh": 8, "reuse_context": True},
    "cache 8 fixed length": {"cache_refresh": 8, "length": "fixed"},
    "cache 8 fixed length + reuse": {"cache_refresh": 8, "length": "fixed",
                                      "reuse_context": True},
}
"""Modes ending in " + reuse" are compared with the same mode without it."""


def sessions(n: int) -> list[tuple[str, int, str]]:
    """(file text, offset of a line's first non-blank character, that line's rest): ``n``
    non-trivial code lines spread over this repository's engine and assistant files."""
    files = [f for f in sorted((ROOT / "engine").glob("*.py")) +
             sorted((ROOT / "assistant").glob("*.py")) if len(f.read_text().splitlines()) > 60]
    picked = []
    for i in range(n):
        text = files[i * len(files) // n].read_text()
        lines = text.splitlines(keepends=True)
        want = len(lines) * 2 // 3  # past the imports and docstrings
        for j in range(want, len(lines)):
            body = lines[j].strip()
            if 24 <= len(body) <= 72 and not body.startswith(("#", '"', "'")):
                start = sum(len(x) for x in lines[:j]) + len(lines[j]) - len(lines[j].lstrip())
                picked.append((text, start, body))
                break
    return picked


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from engine.api import Engine
    from engine.window import build_infill

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--lines", type=int, default=6, help="lines retyped, one per file")
    ap.add_argument("--modes", default="exact,cache 8,cache 8 + reuse")
    args = ap.parse_args()
    modes = args.modes.split(",")
    engine = Engine.load(args.model)
    settings = {m: engine.settings(max_new_tokens=24, steps=24, stop=("\n",), **MODES[m])
                for m in modes}
    times = {m: [] for m in modes}
    computed = {m: [] for m in modes}
    reused = {m: 0 for m in modes}
    outputs = {m: [] for m in modes}
    for text, start, body in sessions(args.lines):
        for k in range(len(body) + 1):
            typed = text[:start] + body[:k]
            after = text[start + len(body):]
            window = build_infill(typed + after, len(typed), engine.tokenizer, 384, 128)
            for m in modes:
                began = time.perf_counter()
                res = engine.infill(window.prefix, window.suffix, settings[m])
                times[m].append(time.perf_counter() - began)
                outputs[m].append(res.completion.split("\n", 1)[0])
                reuse = res.extra.get("reused_positions", 0)
                reused[m] += reuse > 0
                computed[m].append(full_positions(res, settings[m]) - reuse)
    n = len(times[modes[0]])
    table = Table(title=f"Context reuse: {n} keystrokes over {args.lines} retyped lines "
                        f"(single-line requests, embedded model unless --model)")
    for col in ("mode", "median ms", "p90 ms", "full-pass positions / request",
                "requests reusing", "identical to exact", "identical without reuse"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for m in modes:
        ordered = sorted(times[m])
        without = m.replace(" + reuse", "")
        same = {ref: (sum(a == b for a, b in zip(outputs[m], outputs[ref])) / n
                      if ref in outputs else float("nan")) for ref in ("exact", without)}
        table.add_row(m, f"{statistics.median(ordered) * 1e3:.0f}",
                      f"{ordered[int(0.9 * (n - 1))] * 1e3:.0f}",
                      f"{statistics.mean(computed[m]):.0f}", f"{reused[m] / n:.0%}",
                      f"{same['exact']:.1%}", f"{same[without]:.1%}")
    Console().print(table)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the whole run: {peak:.0f} MiB")


def full_positions(res, settings) -> int:
    """Positions computed by full passes: the probe and every pass that recomputed everything
    (all of them when exact; the first and every ``cache_refresh``-th otherwise)."""
    length = res.prompt_tokens + res.canvas_len
    passes = res.steps
    full = passes if not settings.cache_refresh else -(-passes // settings.cache_refresh)
    probe_len = res.prompt_tokens + settings.max_new_tokens if "expected_len" in res.extra else 0
    return full * length + probe_len


if __name__ == "__main__":
    main()
