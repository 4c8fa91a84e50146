"""Where an editor request spends its time, phase by phase, per back end and context size.

    .venv/bin/python benchmarks/latency_breakdown.py [--model M] [--contexts 256,512,1024]
        [--repeats 3] [--backends torch-bfloat16,torch-float32,gguf-f16,gguf-q8_0]

A request as the language server sends it (``assistant.requests`` with the default settings: a
single line on a fixed canvas of 24 slots, a block of up to 96 sized by the length probe, the
context cache refreshed every 8 passes), with the cursor at a line start inside a real file of
this repository (``engine/sampler.py``) and ``N`` context tokens around it (3/4 before, 1/4
after), whose keys no earlier request left (``reuseContext`` off: the typing replay,
``benchmarks/lsp_typing.py``, measures what reuse saves). Columns: loading the back end (once),
tokenizing, the length probe (one full pass over context + 96 masks; blocks only), the first
denoising pass (full), the later passes (the cache's windowed ones, mean), how many passes ran,
the request's total, and the same request decoded exactly (no cache) for comparison. Medians
over ``--repeats``; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "engine" / "sampler.py"
KINDS = {"line": "single", "block": "multi"}
"""The table's request names -> ``assistant.requests`` modes."""


def cursor_context(tokenizer, n_tokens: int) -> tuple[str, str]:
    """(prefix, suffix) around a line start in the middle of SOURCE, about n_tokens in all."""
    lines = SOURCE.read_text().splitlines(keepends=True)
    at = next(i for i in range(len(lines) // 2, len(lines)) if lines[i].startswith("        "))
    prefix, suffix = "".join(lines[:at]) + "        ", "\n" + "".join(lines[at + 1:])
    ids_pre, ids_suf = tokenizer.encode(prefix), tokenizer.encode(suffix)
    keep_pre, keep_suf = n_tokens * 3 // 4, n_tokens // 4
    return tokenizer.decode(ids_pre[-keep_pre:]), tokenizer.decode(ids_suf[:keep_suf])


def load(backend: str, model: str | None):
    from engine.api import Engine

    kind, variant = backend.split("-", 1)
    start = time.perf_counter()
    if kind == "torch":
        engine = Engine.load(model, device="cpu", dtype=variant)
    else:
        engine = Engine.load(model, backend="llamacpp", quant=variant, threads=2, n_ctx=2048)
    return engine, time.perf_counter() - start


def one_request(engine, prefix: str, suffix: str, mode: str, exact: bool) -> dict:
    """Phase times (ms) of one request with the editor's settings (``exact``: no cache)."""
    from dataclasses import replace

    from assistant.requests import request_settings
    from assistant.settings import AssistantSettings

    settings = replace(request_settings(AssistantSettings(), engine, mode), reuse_context=False)
    if exact or engine.backend != "torch":
        settings = replace(settings, cache_refresh=0)
    slots = settings.max_new_tokens
    t0 = time.perf_counter()
    pre, suf, _ = engine.infill_prompt(prefix, suffix, slots)
    t1 = time.perf_counter()
    if settings.length == "adaptive":
        engine.probe_length(pre, suf, slots)
    t2 = time.perf_counter()
    stamps, result = [], None
    start = time.perf_counter()
    for item in engine.infill_stream(prefix, suffix, settings):
        stamps.append(time.perf_counter())
        result = item
    total = (stamps[-1] - start) * 1000
    # infill_stream runs its own probe first: the first frame's time less one probe is pass 1
    probe_ms = (t2 - t1) * 1000
    first = (stamps[0] - start) * 1000 - probe_ms
    later = [(b - a) * 1000 for a, b in zip(stamps[:-2], stamps[1:-1])]
    return {"tokenize": (t1 - t0) * 1000, "probe": probe_ms, "first": first,
            "later": statistics.mean(later) if later else 0.0,
            "passes": result.extra.get("forward_passes"), "total": total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--contexts", default="256,512,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="torch-bfloat16,torch-float32,gguf-f16,gguf-q8_0")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    print("| back end | request | context | load s | tokenize ms | probe ms | first pass ms "
          "| later pass ms | passes | total ms (editor) | total ms (exact) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for backend in args.backends.split(","):
        engine, load_s = load(backend, args.model)
        for n in (int(c) for c in args.contexts.split(",")):
            prefix, suffix = cursor_context(engine.tokenizer, n)
            for kind, mode in KINDS.items():
                one_request(engine, prefix, suffix, mode, False)  # warm-up
                runs = [one_request(engine, prefix, suffix, mode, False)
                        for _ in range(args.repeats)]
                exact = [one_request(engine, prefix, suffix, mode, True)["total"]
                         for _ in range(args.repeats)] if engine.backend == "torch" else [None]
                m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                ex = statistics.median(exact) if exact[0] is not None else None
                probe = f"{m['probe']:.0f}" if m["probe"] > 0.5 else "-"
                print(f"| {backend} | {kind} | {n} | {load_s:.1f} | {m['tokenize']:.1f} | "
                      f"{probe} | {m['first']:.0f} | {m['later']:.0f} | "
                      f"{m['passes']:.0f} | {m['total']:.0f} | "
                      f"{'-' if ex is None else f'{ex:.0f}'} |", flush=True)


if __name__ == "__main__":
    main()
