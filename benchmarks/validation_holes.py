"""How well models predict the holes of a repository's validation files: the question whether
personalization's early stopping could watch the task (holes asked with context) instead of the
text (masked windows, what ``unmask train personalize`` scores now).

    .venv/bin/python benchmarks/validation_holes.py --repo DIR [--exclude GLOB ...]
        [--holes 16] [--decode 30] MODEL [MODEL ...]

The validation files are the ones personalization keeps out (``validation_files``, share 0.1,
the same pick on every run); ``--exclude`` must name what the run excluded (the benchmark's
held-out files), or the pick differs. Per model: the cross-entropy (nats per canvas token) of
``--holes`` line and block holes of those files, each asked as training asks it (repository
context always on, a window around the hole, the canvas padded), the canvas fully masked as an
editor's first denoising step sees it; the same holes, padding and masks for every model.
Then what decoding makes of them: ``--decode`` line holes of the same files asked for as
``unmask eval repo`` asks (the editors' single-line request, the file's own lines as context),
greedy, and how many answers equal the removed line (no test runs: the validation files need
not be tested code). Also the seconds each model took and the peak memory of the run.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--exclude", action="append", default=[])
    ap.add_argument("--holes", type=int, default=16, help="holes per kind")
    ap.add_argument("--decode", type=int, default=30, help="line holes to decode (0: none)")
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()

    import torch

    from cli.train import editor_request
    from engine.api import Engine
    from engine.errors import ConfigError
    from engine.loading import base_folder, load_model, resolve_model
    from engine.repo import RepoIndex
    from engine.tokenizer import DreamTokenizer
    from training.holes import candidate_holes, hole_at, sample_holes
    from training.personalize import (PersonalizeConfig, canvas_specials, make_batch,
                                      make_example, probe_ce, training_spans, validation_files)
    from training.repo_eval import answers_for

    try:  # the index training builds, whose context eval repo's requests also hold
        index = RepoIndex(args.repo, args.exclude)
    except ConfigError as e:  # no such folder, no Python, an exclude that matches nothing
        sys.exit(f"error: {e}")
    held = validation_files(index.files, PersonalizeConfig.validation)
    spans = training_spans(held)
    if not spans:
        sys.exit(f"error: {args.repo}'s validation files ({', '.join(sorted(held)) or 'none'}) "
                 "hold no function to make holes of; pick a repository with more files")
    lines = sample_holes([h for rel in sorted(held) for h in candidate_holes(rel, held[rel])
                          if h.kind == "line"], args.decode)
    print(f"validation files: {', '.join(sorted(held))}")
    print(f"\n| model | line-hole CE | block-hole CE | lines exact (of {len(lines)}) | seconds |"
          "\n|---|---:|---:|---:|---:|")
    for name in args.models:
        start = time.perf_counter()
        folder = resolve_model(name)
        loaded = load_model(folder, "cpu", "float32")
        tok = DreamTokenizer.from_folder(base_folder(folder))
        sp = canvas_specials(folder, tok, loaded.config)
        cfg = PersonalizeConfig(repo=str(args.repo), out=str(folder), context_share=1.0)
        cells = []
        for kind in ("line", "block"):
            rng = random.Random(0)  # the same holes, padding and context for every model
            pick = rng.sample(spans.get(kind, []), min(args.holes, len(spans.get(kind, []))))
            examples = [e for e in (make_example(hole_at(rel, held[rel], a, b, kind), index,
                                                 tok, cfg, sp, rng) for rel, a, b in pick) if e]
            if not examples:
                cells.append("-")
                continue
            batch = make_batch(examples, sp.pad_id, sp.mask_id,
                               torch.Generator().manual_seed(0),
                               t=torch.ones(len(examples)))
            cells.append(f"{probe_ce(loaded.model, batch, bf16=True):.3f}")
        # loaded again to decode: the CE above is personalization's (float32 weights under bf16
        # autocast), the answers are eval repo's (the engine's default dtype)
        del loaded
        engine = Engine.load(name, device="cpu")
        exact = sum(answer.strip() == hole.middle.strip() for hole, answer in
                    zip(lines, answers_for(engine, lines, index, editor_request)))
        print(f"| {name} | {cells[0]} | {cells[1]} | {exact} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
