"""How much learning signal GRPO's reward carries, all-or-nothing (the paper's) against partial
test credit, on the same rollouts, side by side in one run.

    .venv/bin/python benchmarks/grpo_credit.py --repo PATH --init MODEL [--exclude GLOB ...]
        [--holes 24] [--group 4] [--seed 0]

The tasks are the ones ``unmask train grpo`` mines from the non-excluded files (the same
seeds, so the same holes); each is rolled out ``--group`` times exactly as a GRPO round rolls
out (``training.grpo.rollout``: the editors' request and decoding, temperature 1.2), and every
completion is rewarded both ways from the same test run (the suite without ``-x``; a passing
run is a pass either way). A group whose rewards are all equal has no advantage, so no
gradient: the share of groups with unequal rewards is the share of tasks a round can learn
from, and the code term's share says whether the tests, not only parsing, speak.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    from engine.api import Engine
    from engine.repo import RepoIndex
    from engine.sandbox import RepoSandbox
    from training.grpo import GrpoConfig, Rewarder, rollout, task_kinds
    from training.holes import mine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--init", required=True, help="the model GRPO starts from")
    ap.add_argument("--exclude", action="append", default=[])
    ap.add_argument("--holes", type=int, default=24)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = GrpoConfig(repo=str(args.repo), out=".", init=args.init, exclude=args.exclude,
                     holes=args.holes, group=args.group, partial_credit=True)
    index = RepoIndex(args.repo, args.exclude)
    engine = Engine.load(args.init, device="cpu")
    schemes = {"all or nothing (the paper's)": replace(cfg, partial_credit=False),
               "partial credit": cfg}
    with RepoSandbox(args.repo, cfg.test_cmd, cfg.test_timeout) as sandbox:
        began = time.perf_counter()
        holes = mine(sandbox, index.files, task_kinds(cfg.holes),
                     lambda label, done, total, kept: print(
                         f"{label}: {done}/{total} tried, {kept} kept", file=sys.stderr,
                         flush=True))
        mined = time.perf_counter() - began
        partial = Rewarder(sandbox, cfg)
        rewards = {name: [] for name in schemes}

        def both(hole, text):  # one test run, both rewards: (reward, its code term)
            r, passed, parsed = partial(hole, text)
            for name, c in schemes.items():
                code = r - c.format_weight * parsed if c.partial_credit else \
                    c.code_weight * passed
                rewards[name].append((code + c.format_weight * parsed, code))
            return r, passed, parsed

        began, passed = time.perf_counter(), 0
        for k, hole in enumerate(holes):
            _, info = rollout(engine, hole, cfg, args.seed * 1000 + k, both, uid0=0, index=index)
            passed += info["passed"]
            print(f"{k + 1}/{len(holes)} holes rolled out, {passed} rollouts passed, "
                  f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        spent = time.perf_counter() - began
    G, n = cfg.group, len(holes)
    print(f"{Path(args.repo).name}: {n} training-side holes (mined in {mined:.0f} s), {G} "
          f"rollouts each from {args.init}; {passed} of {n * G} rollouts passed the suite; "
          f"{spent:.0f} s for rollouts and {partial.runs} test runs "
          f"({len(partial.blank_failures)} of them blanks)\n")
    print("| reward | mean | groups with unequal rewards | groups whose tests' term varies |\n"
          "|---|---:|---:|---:|")
    for name in schemes:
        pairs = rewards[name]
        groups = [pairs[i:i + G] for i in range(0, len(pairs), G)]
        unequal = sum(len({r for r, _ in g}) > 1 for g in groups)
        varies = sum(len({code for _, code in g}) > 1 for g in groups)
        print(f"| {name} | {sum(r for r, _ in pairs) / len(pairs):.3f} | {unequal}/{n} | "
              f"{varies}/{n} |")


if __name__ == "__main__":
    main()
