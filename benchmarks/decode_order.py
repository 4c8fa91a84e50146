"""Decoding order against speed and exactness on held-out lines (never HumanEval).

    .venv/bin/python benchmarks/decode_order.py [--model M] [--holes 60] [--seed 0] [--orders 3]
        [--guard 1,2] [--parent-branches 0]

Single-line holes cut from the corpus's validation files (``data/corpus/val.jsonl``, held out
of training by path hash): a random non-blank line of a file with 1,500 characters around it.
Each order decodes the same holes greedily with the editor's single-line settings (24 slots,
adaptive canvas, stop at the line's end); the table gives the share of completions equal to the
held-out line (whitespace-trimmed), the number left blank (the first line empty: every held-out
line is non-blank, so a blank one is always a miss), how many leave the whole file parsing
(the file parses with its own line, so a line that breaks it is incoherent: ``for = 0``, an
unclosed quote), forward passes and milliseconds per hole,
and the mean local AR-ness@1 of the order the slots were decoded in (1.0 = strictly left to
right). This is how the embedded model's decoding default was chosen, on code no evaluation
uses. ``--guard`` adds rows with the language server's syntax guard (``engine.syntax_guard``):
an answer that leaves its file unparsable is decoded again, and the passes and milliseconds
then count every try; "withheld" counts the holes where no try was accepted (the editor then
shows nothing). The guard also rejects a copy of the line below the hole
(``engine.syntax_guard.copies_line_below``); each number of retries gets a row with the parse
alone too, and "copies" counts the answers that are such a copy (the table's notes say how many
held-out lines themselves are: what the rule withholds wrongly at most).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORDERS = {
    "entropy, one block (Dream)": {"alg": "entropy", "block_length": 0},
    "left to right (block 1)": {"alg": "entropy", "block_length": 1},
    "confidence 0.9, blocks of 8": {"alg": "confidence_threshold", "threshold": 0.9,
                                    "block_length": 8},
}


def holes(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prefix, line, suffix) of whole files; the model reads 1,500 characters either side."""
    rng = random.Random(seed)
    files = [json.loads(line)["text"] for line in
             (ROOT / "data" / "corpus" / "val.jsonl").read_text().splitlines()]
    out = []
    while len(out) < n:
        lines = rng.choice(files).splitlines(keepends=True)
        idx = [i for i, l in enumerate(lines) if l.strip() and 3 < i < len(lines) - 3]
        if not idx:
            continue
        i = rng.choice(idx)
        out.append(("".join(lines[:i]), lines[i], "".join(lines[i + 1:])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--holes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--orders", default=",".join(str(i + 1) for i in range(len(ORDERS))),
                    help="which rows to run, numbered from 1 (e.g. 3: only the default order)")
    ap.add_argument("--guard", default="",
                    help="also rows of the default order with the guard, one per number of "
                         "retries (e.g. 0,2), each with the parse alone and with the copy rule: "
                         "an answer that leaves the file unparsable or copies the line below "
                         "is decoded again (Engine.alternatives), as the language server does")
    ap.add_argument("--parent-branches", type=int, default=None,
                    help="the parent's rerank (default: the model's own, 3 for the embedded "
                         "model; 0: the diffusion answer alone, as the editors ask)")
    args = ap.parse_args()
    import torch

    from engine.analysis import local_ar_ness
    from engine.api import Engine
    from engine.syntax_guard import answer_check, copies_line_below, parses

    torch.set_num_threads(2)
    engine = Engine.load(args.model, device="cpu")
    cases = holes(args.holes, args.seed)
    valid = [parses(p + m + s) for p, m, s in cases]  # a file that never parsed tells nothing
    print(f"| order | exact line | blank | file parses (of {sum(valid)}) | copies | withheld | "
          "passes/hole | ms/hole | local AR-ness@1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(name, order, None) for name, order in
            (list(ORDERS.items())[int(i) - 1] for i in filter(None, args.orders.split(",")))]
    default = ORDERS["confidence 0.9, blocks of 8"]
    rows += [(f"confidence 0.9, blocks of 8 + {kind}, {n} retr{'y' if n == '1' else 'ies'}",
              {**default, "retries": int(n)}, kind) for n in filter(None, args.guard.split(","))
             for kind in ("parse guard", "parse + copy guard")]
    copied = sum(copies_line_below(p, m.rstrip("\n"), "\n" + s) for p, m, s in cases)
    notes = [f"held-out lines that copy the line below them: {copied} of {len(cases)}"]
    for name, order, guard in rows:
        exact, blank, parsed, copies, withheld, passes, ms, ar = 0, 0, 0, 0, 0, [], [], []
        by_try: dict[int, list[int]] = {}  # try that gave the answer -> [holes, exact]
        for (prefix, middle, suffix), ok in zip(cases, valid):
            settings = engine.settings(max_new_tokens=24, steps=24, length="adaptive",
                                       temperature=0.0, stop=("\n",),
                                       parent_branches=args.parent_branches, **order)
            # the whole file is the editor's buffer; the model reads 1,500 chars of it
            accept = answer_check(prefix, "\n" + suffix, syntax_only=guard == "parse guard") \
                if guard else None
            start = time.perf_counter()
            res = engine.infill(prefix[-1500:], suffix[:1500], settings, accept=accept)
            ms.append((time.perf_counter() - start) * 1000)
            line = res.completion.split("\n")[0]
            first = line.strip()
            exact += first == middle.strip()
            blank += not first
            parsed += ok and parses(prefix + line + "\n" + suffix)
            copies += copies_line_below(prefix, line, "\n" + suffix)
            withheld += res.extra.get("accepted") is False  # the editor shows nothing
            if res.extra.get("accepted"):
                count = by_try.setdefault(res.extra["tries"], [0, 0])
                count[0] += 1
                count[1] += first == middle.strip()
            passes.append(res.extra.get("forward_passes", res.steps))
            ar.append(local_ar_ness(res.order))
        print(f"| {name} | {exact}/{len(cases)} | {blank} | {parsed} | {copies} | {withheld} | "
              f"{statistics.mean(passes):.1f} | "
              f"{statistics.mean(ms):.0f} | {statistics.mean(ar):.2f} |", flush=True)
        if by_try:  # fewer retries keep the answers of the earlier tries, the rest withheld
            notes.append(f"{name}: answer accepted at try " + ", ".join(
                f"{k}: {n} holes ({e} exact)" for k, (n, e) in sorted(by_try.items())))
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
