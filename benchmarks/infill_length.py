"""How long should an infill canvas be? The shipped probe against CAL and a fixed canvas, side by
side in one run, on the same holes.

    .venv/bin/python benchmarks/infill_length.py [--model M] [--holes 80] [--corpus FILE.jsonl]

Holes are the editor's shapes from the one miner (``training.holes``: a line, a block of 2-4
lines), in this repository's own Python files by default (never in the training corpus, never
HumanEval) or in a JSONL of ``{"path", "text"}`` records (``--corpus data/corpus/val.jsonl``, the
corpus's held-out split). Each strategy estimates every hole's length in tokens before decoding;
the reference is the hole's real middle. Strategies:

- fixed: the canvas the evaluation and the editor use without a strategy (32 slots for a line,
  96 for a block).
- probe (shipped, ``Engine.probe_length``): one pass over a full canvas; the expected number of
  slots that are not pad/eos. "probe canvas" is the canvas it then decodes (with its margin).
- CAL (Liu, Yang, Su 2026): one pass per candidate length L; the mean top-1 probability of the
  L masks, divided by its length bias B(L) (the mean over holes whose length is more than 4 from
  L), argmax over L. B is fitted on the first half of the holes, every row is measured on the
  second half.

Printed per strategy and hole kind: mean relative error |estimate - reference| / reference,
the share within 20 % of the reference, the median ratio estimate / reference, forward passes and
milliseconds per estimate; then peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.sampler import masked_logits  # noqa: E402
from training.holes import candidate_holes, sample_holes  # noqa: E402

CANVAS = {"line": 32, "block": 96}
"""Canvas per hole kind, as ``unmask eval`` sizes single- and multi-line tasks."""
GRID = (2, 4, 6, 8, 11, 14, 18, 23, 29, 36, 45, 56, 70, 88)
"""CAL's candidate lengths (about 25 % apart)."""


def sources(corpus: Path | None) -> dict[str, str]:
    if corpus is not None:
        rows = (json.loads(line) for line in corpus.read_text().splitlines() if line.strip())
        return {r["path"]: r["text"] for r in rows}
    return {p.relative_to(ROOT).as_posix(): p.read_text() for d in
            ("engine", "training", "assistant", "lsp", "ui", "cli")
            for p in sorted((ROOT / d).rglob("*.py"))}


def confidence(engine, pre: list[int], suf: list[int], n: int) -> float:
    """CAL's first-step score of a canvas of ``n`` masks: mean top-1 probability."""
    x = torch.tensor([pre + [engine.mask_id] * n + suf], device=engine.device)
    logits = masked_logits(engine.denoiser, x, x == engine.mask_id)
    return float(torch.softmax(logits.float(), -1).max(-1).values.mean())


def measure(engine, holes) -> list[dict]:
    rows = []
    for hole in holes:
        canvas = CANVAS[hole.kind]
        pre, suf, _ = engine.infill_prompt(hole.prefix, hole.suffix, canvas)
        t = time.perf_counter()
        probe_canvas, info = engine.probe_length(pre, suf, canvas)
        probe_ms = (time.perf_counter() - t) * 1000
        grid = [n for n in GRID if n <= canvas]
        t = time.perf_counter()
        phi = {n: confidence(engine, pre, suf, n) for n in grid}
        cal_ms = (time.perf_counter() - t) * 1000
        rows.append({"kind": hole.kind, "reference": len(engine.tokenizer.encode(hole.middle)),
                     "fixed": canvas, "probe": info["expected_len"], "probe canvas": probe_canvas,
                     "phi": phi, "ms": {"probe": probe_ms, "probe canvas": probe_ms,
                                        "CAL": cal_ms, "fixed": 0.0}})
    return rows


def calibrate(fit_rows: list[dict]) -> dict[int, float]:
    """CAL's length bias: the mean score at L over holes whose real length is not near L."""
    bias = {}
    for n in GRID:
        far = [r["phi"][n] for r in fit_rows if n in r["phi"] and abs(n - r["reference"]) > 4]
        if far:
            bias[n] = statistics.fmean(far)
    return bias


def table(rows: list[dict], bias: dict[int, float]):
    from rich.table import Table

    out = Table(title=f"infill length estimates, {len(rows)} held-out holes (second half)")
    for col in ("kind", "strategy", "mean rel. error", "within 20 %", "median est/ref",
                "passes", "ms"):
        out.add_column(col, justify="right")
    for r in rows:
        r["CAL"] = max(r["phi"], key=lambda n: r["phi"][n] / bias[n])
    for kind in CANVAS:
        of_kind = [r for r in rows if r["kind"] == kind]
        for name in ("fixed", "probe", "probe canvas", "CAL"):
            est = [(r[name], max(1, r["reference"])) for r in of_kind]
            passes = {"fixed": 0, "CAL": len(of_kind[0]["phi"])}.get(name, 1)
            out.add_row(kind, name,
                        f"{statistics.fmean(abs(e - ref) / ref for e, ref in est):.2f}",
                        f"{sum(abs(e - ref) <= 0.2 * ref for e, ref in est) / len(est):.0%}",
                        f"{statistics.median(e / ref for e, ref in est):.2f}", str(passes),
                        f"{statistics.fmean(r['ms'][name] for r in of_kind):.0f}")
    return out


def main() -> None:
    from rich.console import Console

    from engine.api import Engine

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--holes", type=int, default=80, help="per kind (half fit CAL, half measure)")
    ap.add_argument("--corpus", type=Path, default=None, help="JSONL of {path, text} records")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    engine = Engine.load(args.model, device="cpu")
    found = [h for path, text in sources(args.corpus).items()
             for h in candidate_holes(path, text, tuple(CANVAS))]
    holes = [h for kind in CANVAS for h in
             sample_holes([h for h in found if h.kind == kind], args.holes, args.seed)]
    with torch.inference_mode():
        rows = measure(engine, holes)
    fit, test = rows[0::2], rows[1::2]
    Console().print(table(test, calibrate(fit)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{engine.name}; peak RSS {peak:.0f} MiB; {torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
