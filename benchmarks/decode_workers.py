"""Decoding a batch of editor requests in worker processes (``engine.pool.InfillPool``, what
``unmask eval repo`` does by default on a multi-core CPU) against one process using every core
(its default before), side by side in one run.

    .venv/bin/python benchmarks/decode_workers.py [--model M] [--folder engine] [--holes 36]
        [--workers 2]

Holes are lines (two thirds) and 2-4 line blocks (a third) of this repository's own files (a
speed measurement: no test is run), asked for as the repo benchmark asks (``editor_request``,
the file's own lines as context). Printed per mode: processes x threads, seconds to answer
every request (the workers' start included: ``eval repo`` starts them for each model), requests
per second, peak memory per process, and whether every answer is the same as the one
process's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--folder", type=Path, default=ROOT / "engine")
    ap.add_argument("--holes", type=int, default=36)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import torch

    from cli.train import editor_request
    from engine.api import Engine
    from engine.pool import InfillPool, complete, cpu_cores
    from engine.repo import RepoIndex, python_files
    from training.holes import candidate_holes, sample_holes
    from training.repo_eval import ask

    engine = Engine.load(args.model)
    folder = args.folder.resolve()
    holes = [h for rel in python_files(folder)
             for h in candidate_holes(rel.as_posix(), (folder / rel).read_text("utf-8"))]
    lines = args.holes - args.holes // 3
    picked = sample_holes([h for h in holes if h.kind == "line"], lines) + \
        sample_holes([h for h in holes if h.kind == "block"], args.holes - lines)
    index = RepoIndex(folder, [], "file")
    requests = [ask(engine, hole, index, editor_request) for hole in picked]
    print(f"{len(requests)} requests ({lines} lines) from {folder.name}/, model "
          f"{engine.name}, {cpu_cores()} cores", file=sys.stderr)

    rows = []
    torch.set_num_threads(cpu_cores())
    began = time.monotonic()
    alone = [complete(engine, request) for request in requests]
    rows.append(("one process", f"1 x {cpu_cores()}", time.monotonic() - began,
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, alone))
    print(f"one process: {rows[-1][2]:.1f} s", file=sys.stderr)

    began = time.monotonic()  # the workers' start counts against them, as in eval repo
    with InfillPool(engine.folder, workers=args.workers) as pool:
        texts = list(pool.map(requests))
    threads = max(1, cpu_cores() // args.workers)
    rows.append((f"{args.workers} workers", f"{args.workers} x {threads}",
                 time.monotonic() - began,
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, texts))

    print("| mode | processes x threads | seconds | requests/s | speedup | peak MB per process "
          "| same answers |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, shape, seconds, rss_kb, answers in rows:
        same = sum(a == b for a, b in zip(answers, alone))
        print(f"| {name} | {shape} | {seconds:.1f} | {len(requests) / seconds:.2f} "
              f"| {rows[0][2] / seconds:.2f}x | {rss_kb / 1024:.0f} | {same}/{len(alone)} |")


if __name__ == "__main__":
    main()
