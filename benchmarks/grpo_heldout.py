"""Held-out repository holes: a personalized model against the same model after coupled-GRPO,
over several GRPO seeds, side by side in one run.

    .venv/bin/python benchmarks/grpo_heldout.py --repo PATH --exclude GLOB [--exclude ...]
        --personalized DIR --grpo DIR [DIR ...] [--holes 60] [--score N] [--test-cmd CMD]

The holes are ``unmask eval repo``'s (test-verified single lines and blocks of the ``--exclude``d
files, which neither personalization nor GRPO ever read), scored the same way: asked for as
the editors ask (``assistant.requests``), without repository context, the repository's own
suite on a temporary copy. Each ``--grpo`` folder is a ``unmask train grpo --init
PERSONALIZED`` run with its own ``--seed``; the table gives each run, their mean and spread,
and the personalized model alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    from cli.train import editor_request
    from engine.api import Engine
    from engine.loading import cache_dir
    from engine.sandbox import RepoSandbox
    from training import repo_eval

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--exclude", action="append", required=True)
    ap.add_argument("--personalized", required=True)
    ap.add_argument("--grpo", nargs="+", required=True)
    ap.add_argument("--holes", type=int, default=60,
                    help="single-line holes mined (blocks: half), as unmask eval repo --holes")
    ap.add_argument("--score", type=int, default=0,
                    help="score only the first N single-line and N/2 block holes (0: all)")
    ap.add_argument("--test-cmd", default="python -m pytest -x -q")
    ap.add_argument("--test-timeout", type=float, default=120.0)
    args = ap.parse_args()
    repo = args.repo.resolve()
    rows = []
    with RepoSandbox(repo, args.test_cmd, args.test_timeout) as sandbox:
        bench = repo_eval.mine(repo, args.exclude, sandbox, args.holes, args.holes // 2,
                               cache=cache_dir() / "holes")
        if args.score:
            bench.holes = {"line": bench.holes.get("line", [])[:args.score],
                           "block": bench.holes.get("block", [])[:args.score // 2]}
        for label, folder in [("personalized", args.personalized)] + \
                [(f"+ grpo ({Path(g).name})", g) for g in args.grpo]:
            began = time.perf_counter()
            engine = Engine.load(folder, device="cpu")
            res = repo_eval.score(engine, bench, sandbox, False, editor_request)
            rows.append((label, res, time.perf_counter() - began))
    n_line, n_block = len(bench.holes.get("line", [])), len(bench.holes.get("block", []))
    print(f"{repo.name}: {n_line} single-line and {n_block} block holes of "
          f"{', '.join(bench.held_out)} (held out), no repository context\n")
    print("| model | line pass@1 | line exact | block pass@1 | block exact | seconds |\n"
          "|---|---:|---:|---:|---:|---:|")
    for label, res, secs in rows:
        line, block = res.get("line", {}), res.get("block", {})
        print(f"| {label} | {line.get('pass@1', 0):.3f} | {line.get('exact', 0):.3f} | "
              f"{block.get('pass@1', 0):.3f} | {block.get('exact', 0):.3f} | {secs:.0f} |")
    for kind in ("line", "block"):
        runs = [res.get(kind, {}).get("pass@1", 0.0) for _, res, _ in rows[1:]]
        base = rows[0][1].get(kind, {}).get("pass@1", 0.0)
        spread = statistics.stdev(runs) if len(runs) > 1 else 0.0
        print(f"\n{kind}: grpo mean {statistics.mean(runs):.3f} +- {spread:.3f} (sd over "
              f"{len(runs)} seeds) vs personalized {base:.3f}: difference "
              f"{statistics.mean(runs) - base:+.3f}", end="")
    print()


if __name__ == "__main__":
    main()
