"""The parent's rerank of single-line answers against the diffusion model and the parent alone,
on held-out lines (never HumanEval).

    .venv/bin/python benchmarks/parent_rerank.py [--model M] [--holes 100] [--seed 1]
        [--branches 3] [--suffix-lines 8]     (a grid: --branches 1,2,3 --suffix-lines 0,8,32)

The holes are ``benchmarks/decode_order.py``'s: a random non-blank line of a corpus validation
file, 1,500 characters either side, the editor's single-line settings (24 slots, stop at the
line's end), greedy. Rows, on the same holes in one run:

- the diffusion model alone (it reads the suffix);
- the parent alone: the adapted model's pretrained base, greedy, left to right on the prefix (healed);
- the rerank (``engine.rerank``, ``parent_branches``): the diffusion answer and the parent's
  lines, the one under which the parent finds prefix + line + ``--suffix-lines`` lines of the
  suffix likeliest; one row per pair of the two lists. Each row reranks the diffusion row's
  answer, as ``Engine.infill`` with ``parent_branches`` does (tests/engine/test_rerank.py), and
  its milliseconds are the diffusion's plus its own.

Columns: lines equal to the held-out one (whitespace-trimmed), files that parse with the answer
(of those that parse with their own line), milliseconds per hole, the process's resident
memory with the models loaded (the adapted model alone for the diffusion row, the parent beside
it for the others), and how often the parent's line won.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mib() -> float:
    """The process's resident memory now (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--holes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--branches", default="3", help="parent lines, one row each (e.g. 1,2,3)")
    ap.add_argument("--suffix-lines", default="8",
                    help="suffix lines scored, one row each (e.g. 0,8,32)")
    args = ap.parse_args()
    import torch

    from decode_order import holes
    from engine.api import Engine
    from engine.autoregressive import prompt_cache
    from engine.healing import plan_healing
    from engine.loading import base_folder
    from engine.rerank import candidate_texts, parent_texts, score_texts
    from engine.syntax_guard import first_line, parses

    torch.set_num_threads(2)
    engine = Engine.load(args.model, device="cpu")
    loaded = {"diffusion": resident_mib()}  # the adapted model alone
    if base_folder(engine.folder) == engine.folder:
        raise SystemExit(f"{engine.name} has no autoregressive parent (not a LoRA adapter)")
    parent = engine.parent
    loaded["parent"] = resident_mib()  # with the parent beside it
    grid = [(int(b), int(n)) for b in args.branches.split(",") for n in
            args.suffix_lines.split(",")]
    cases = holes(args.holes, args.seed)
    valid = [parses(p + m + s) for p, m, s in cases]  # a file that never parsed tells nothing
    settings = engine.settings(max_new_tokens=24, steps=24, length="adaptive", temperature=0.0,
                               stop=("\n",), parent_branches=0)
    ends = set(engine.end_ids)
    rows: dict[str, list] = {}  # row -> [exact, parses, ms per hole]
    chosen: dict[str, int] = {}  # row -> holes where the parent's line won

    def count(row: str, line: str, middle: str, ok: bool, ms: float, before: str,
              after: str) -> None:
        r = rows.setdefault(row, [0, 0, []])
        r[0] += line.strip() == middle.strip()
        r[1] += ok and parses(before + line + "\n" + after)
        r[2].append(ms)

    diffusion_row, parent_row = "diffusion model alone", "parent alone (prefix only, greedy)"
    for (before, middle, after), ok in zip(cases, valid):
        prefix, suffix = before[-1500:], after[:1500]  # the model reads 1,500 chars either side
        start = time.perf_counter()
        answer = engine.infill(prefix, suffix, settings).completion
        t_diffusion = time.perf_counter() - start
        count(diffusion_row, first_line(answer), middle, ok, t_diffusion * 1000, before, after)
        heal = plan_healing(engine.tokenizer, prefix, suffix)
        prompt = engine.infill_prompt(prefix, "", settings.max_new_tokens)[0]
        start = time.perf_counter()
        cache, logits = prompt_cache(parent, torch.tensor([prompt]))
        t_cache = time.perf_counter() - start
        greedy = parent_texts(parent, engine.tokenizer, cache, logits, len(prompt), heal, 1,
                              settings.max_new_tokens, ends)
        count(parent_row, greedy[0] if greedy else "", middle, ok,
              (time.perf_counter() - start) * 1000, before, after)
        for branches in sorted({b for b, _ in grid}):
            start = time.perf_counter()
            lines = candidate_texts(answer, parent_texts(
                parent, engine.tokenizer, cache, logits, len(prompt), heal, branches,
                settings.max_new_tokens, ends), block=False)
            t_lines = time.perf_counter() - start
            for b, n in grid:
                if b != branches:
                    continue
                start = time.perf_counter()
                best = score_texts(parent, engine.tokenizer, cache, logits, len(prompt), lines,
                                   prefix, suffix, heal, n, ends)[0]
                spent = t_diffusion + t_cache + t_lines + time.perf_counter() - start
                row = f"rerank: diffusion + {b} parent lines, {n} suffix lines"
                chosen[row] = chosen.get(row, 0) + (best.source == "parent")
                count(row, best.text, middle, ok, spent * 1000, before, after)
    print(f"| answer | exact line | file parses (of {sum(valid)}) | ms/hole | "
          "models resident, MiB | parent's line chosen |")
    print("|---|---:|---:|---:|---:|---:|")
    for row, (exact, parsed, ms) in rows.items():
        mib = loaded["diffusion" if row == diffusion_row else "parent"]
        print(f"| {row} | {exact}/{len(cases)} | {parsed} | {statistics.mean(ms):.0f} | "
              f"{mib:.0f} | {chosen.get(row, '')} |")
    print(f"\npeak resident memory of the whole run: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
