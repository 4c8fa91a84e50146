"""What stopping a block request once its scope's cut is known saves, and what it costs.

    .venv/bin/python benchmarks/scope_stop.py [--model M] [--requests 16] [--file-lines 2800]

Two parts, each side by side in one run on this machine:

1. Block requests as the language server sends them (``assistant.requests``, the default
   settings: up to 96 slots sized by the length probe, ``limitScope`` on, the context cache),
   with the cursor at ``--requests`` line starts inside function bodies of this repository's
   ``engine/*.py``, each decoded twice by the same engine: stopping once the committed start of
   the canvas holds a line that leaves the hole's scope (``engine.scope.scope_settled``, the
   default) and decoding the whole canvas, as before, then cutting. Columns: forward passes,
   seconds, and how many answers are identical (the stop claims all of them).
2. The file context (``engine.repo``, retrieval ``file``) of a request in a ``--file-lines``
   long file: the first request on the document (its unseen windows indexed) against the
   following ones (the index kept while the text outside the window is unchanged). Median ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def block_requests(n: int) -> list[tuple[str, str]]:
    """(before, after) at ``n`` line starts spread over the function bodies of engine/*.py."""
    spots = []
    for path in sorted((ROOT / "engine").glob("*.py")):
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        for i in range(40, len(lines) - 10):
            if lines[i].startswith("        ") and lines[i - 1].startswith("        ") \
                    and lines[i].strip() and not lines[i].strip().startswith(("#", '"')):
                at = sum(len(line) for line in lines[:i]) + len(lines[i]) - \
                    len(lines[i].lstrip())
                spots.append((text[:at], text[at:]))
    step = max(1, len(spots) // n)
    return spots[::step][:n]


def decode(engine, spots, stop: bool) -> tuple[list[str], int, float]:
    """Answers, forward passes and seconds of the block requests, with or without the stop."""
    import engine.api as api
    from assistant.requests import request_settings, request_window
    from assistant.settings import AssistantSettings

    settled = api.scope_settled
    api.scope_settled = settled if stop else (lambda *_: False)  # the old behaviour, to compare
    s = AssistantSettings()
    answers, passes, began = [], 0, time.perf_counter()
    try:
        for before, after in spots:
            window = request_window(s, engine, before + after, len(before), "multi")
            result = engine.infill(window.prefix, window.suffix,
                                   request_settings(s, engine, "multi"))
            answers.append(result.completion)
            passes += result.extra["forward_passes"]
    finally:
        api.scope_settled = settled
    return answers, passes, time.perf_counter() - began


def file_context_ms(engine, n_lines: int, repeats: int) -> tuple[float, float]:
    """Median ms of a file-context request on an ``n_lines`` file: first on the document
    (index built), then again on the same text outside the window (index kept)."""
    from engine.repo import RepoIndex, context_budget, unseen_windows
    from engine.window import build_infill

    source = (ROOT / "engine" / "api.py").read_text().splitlines(keepends=True)
    text = "".join(source[i % len(source)] for i in range(n_lines))
    offset = len("".join(text.splitlines(keepends=True)[: n_lines // 2]))
    window = build_infill(text, offset, engine.tokenizer, 192, 64, stable_start=True)
    document = (text[:offset], text[offset:])  # the editor's buffer around the cursor
    index = RepoIndex(ROOT, retrieval="file")
    first, again = [], []
    for _ in range(repeats):
        unseen_windows.cache_clear()
        for times in (first, again):
            t = time.perf_counter()
            index.context(window.prefix, window.suffix, engine.tokenizer,
                          context_budget(engine.context), path="long.py", document=document)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(first), statistics.median(again)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--file-lines", type=int, default=2800)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    from engine.api import Engine

    torch.set_num_threads(2)
    engine = Engine.load(args.model)
    spots = block_requests(args.requests)
    engine.infill(*spots[0], max_new_tokens=8, length="fixed")  # warm-up
    full, full_passes, full_s = decode(engine, spots, stop=False)
    cut, cut_passes, cut_s = decode(engine, spots, stop=True)
    same = sum(a == b for a, b in zip(full, cut))
    print("| block requests | forward passes | seconds | identical answers |")
    print("|---|---:|---:|---:|")
    print(f"| whole canvas, then cut | {full_passes} | {full_s:.1f} | - |")
    print(f"| stop once the scope's cut is known | {cut_passes} | {cut_s:.1f} | "
          f"{same}/{len(spots)} |", flush=True)
    first, again = file_context_ms(engine, args.file_lines, args.repeats)
    print(f"\n| file context, {args.file_lines}-line file | ms |\n|---|---:|")
    print(f"| first request on the document (windows indexed) | {first:.1f} |")
    print(f"| next request, same text outside the window (index kept) | {again:.1f} |")


if __name__ == "__main__":
    main()
