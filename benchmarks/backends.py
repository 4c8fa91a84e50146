"""Torch vs llama.cpp back ends on this CPU: forward time, infill latency, memory, agreement.

    .venv/bin/python benchmarks/backends.py [--model M] [--rounds 3] [--threads 2]

Back ends: torch fp32, torch bf16, GGUF f16, Q8_0, Q4_K_M (exported from the same model).
Timings are interleaved across back ends and repeated ``--rounds`` times (this machine is
noisy); the table shows the median. Memory is the peak RSS of a fresh process that loads the
back end and runs one 64-token infill. Agreement is the share of greedy canvas tokens equal to
torch fp32's on a fixed set of infills.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFIX = 'def count_words(lines):\n    """Count how often each word occurs."""\n    counts = {}\n'
SUFFIX = "    return counts\n"
AGREE = [("def add(a, b):\n", "\n"), ("for i in range(10):\n", "\nprint(total)\n"),
         ("class Stack:\n    def __init__(self):\n", "\n    def push(self, x):\n"),
         ("import os\n\n\ndef main():\n", "\n")]
BACKENDS = ["torch-float32", "torch-bfloat16", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]

MEMORY_PROBE = """
import resource, sys
sys.path.insert(0, {root!r})
from engine.api import Engine, GenerationSettings
kind, arg = {kind!r}, {arg!r}
eng = Engine.load(arg, device="cpu", dtype=kind) if kind != "gguf" else Engine.load(arg, backend="llamacpp")
eng.infill({prefix!r}, {suffix!r}, GenerationSettings(max_new_tokens=64, steps=64, length="fixed"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def load_all(model: str | None, tmp: Path, threads: int):
    from engine.api import Engine
    from engine.gguf_export import write_gguf
    from engine.loading import resolve_model

    folder = resolve_model(model)
    engines, files = {}, {}
    for name in BACKENDS:
        kind, variant = name.split("-", 1)
        if kind == "torch":
            engines[name] = Engine.load(str(folder), device="cpu", dtype=variant)
        else:
            files[name] = write_gguf(folder, tmp / f"{variant}.gguf", variant)
            engines[name] = Engine.load(str(files[name]), backend="llamacpp", threads=threads)
    return folder, engines, files


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from engine.api import GenerationSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmpdir:
        folder, engines, files = load_all(args.model, Path(tmpdir), args.threads)
        fwd = {n: [] for n in engines}
        lat = {(n, k): [] for n in engines for k in (32, 64, 128)}
        ref = engines["torch-float32"]
        ids = torch.tensor([ref.tokenizer.encode(PREFIX) + [ref.mask_id] * 64 +
                            ref.tokenizer.encode(SUFFIX)])
        for _ in range(args.rounds):
            for name, eng in engines.items():  # interleaved
                t = time.perf_counter()
                eng.denoiser.logits(ids)
                fwd[name].append(time.perf_counter() - t)
                for k in (32, 64, 128):
                    s = GenerationSettings(max_new_tokens=k, steps=k // 2, length="fixed")
                    t = time.perf_counter()
                    eng.infill(PREFIX, SUFFIX, s)
                    lat[(name, k)].append(time.perf_counter() - t)
        agree = {}
        for name, eng in engines.items():
            same = total = 0
            for pre, suf in AGREE:
                s = GenerationSettings(max_new_tokens=24, steps=24, length="fixed")
                a, b = eng.infill(pre, suf, s).token_ids, ref.infill(pre, suf, s).token_ids
                same += sum(x == y for x, y in zip(a, b))
                total += len(a)
            agree[name] = same / total
        memory = {}
        for name in engines:
            kind, variant = name.split("-", 1)
            arg = str(files[name]) if kind == "gguf" else str(folder)
            code = MEMORY_PROBE.format(root=str(ROOT), kind=variant if kind == "torch" else "gguf",
                                       arg=arg, prefix=PREFIX, suffix=SUFFIX)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            memory[name] = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 \
                else float("nan")
        sizes = {n: (files[n].stat().st_size / 2**20 if n in files else None) for n in engines}
    table = Table(title=f"back ends on {folder.name}, {args.threads} threads, median of "
                        f"{args.rounds} interleaved rounds (canvas 64 + context for forward)")
    for col in ("back end", "forward ms", "infill 32 s", "infill 64 s", "infill 128 s",
                "peak RSS MiB", "file MiB", "greedy agreement"):
        table.add_column(col, justify="right")
    rows = {}
    for name in engines:
        med = statistics.median
        rows[name] = {"forward_ms": med(fwd[name]) * 1e3,
                      **{f"infill{k}_s": med(lat[(name, k)]) for k in (32, 64, 128)},
                      "rss_mib": memory[name], "agreement": agree[name]}
        table.add_row(name, f"{rows[name]['forward_ms']:.1f}",
                      *(f"{rows[name][f'infill{k}_s']:.2f}" for k in (32, 64, 128)),
                      f"{memory[name]:.0f}", "-" if sizes[name] is None else f"{sizes[name]:.1f}",
                      f"{agree[name]:.0%}")
    Console().print(table)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
