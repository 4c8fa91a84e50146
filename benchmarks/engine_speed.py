"""Forward-pass time and generation tokens/s of the torch engine on this machine.

    .venv/bin/python benchmarks/engine_speed.py [--model M] [--device cpu] [--repeats 3]

Prints one table: for each dtype, the median forward time over a prompt + canvas, and
end-to-end tokens/s for 64- and 256-token generations at several step counts (the canvas is
always fully decoded, so tokens/s = canvas / wall time). Runs are interleaved and repeated
because this machine is noisy; the median is reported.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from engine.api import Engine, GenerationSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {dt: Engine.load(args.model, device=args.device, dtype=dt)
               for dt in args.dtypes.split(",")}
    table = Table(title=f"engine speed ({args.device}, {torch.get_num_threads()} threads)")
    for col in ("dtype", "new tokens", "steps", "tok/step", "forward ms", "wall s", "tok/s"):
        table.add_column(col, justify="right")
    rows = []
    for new in (64, 256):
        for steps in (new, new // 2, new // 4, new // 8):
            for dt, eng in engines.items():  # interleaved dtypes
                ids = torch.tensor([eng.tokenizer.encode(PROMPT) + [eng.mask_id] * new],
                                   device=eng.device)
                fwd = median_time(lambda: eng.denoiser.logits(ids, None, None), args.repeats)
                s = GenerationSettings(max_new_tokens=new, steps=steps, alg="entropy")
                wall = median_time(lambda: eng.generate(PROMPT, s, raw=True), args.repeats)
                rows.append((dt, new, steps, new / steps, fwd * 1e3, wall, new / wall))
    for r in rows:
        table.add_row(r[0], str(r[1]), str(r[2]), f"{r[3]:.0f}", f"{r[4]:.1f}", f"{r[5]:.2f}",
                      f"{r[6]:.1f}")
    Console().print(table)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB (both dtypes loaded)")


if __name__ == "__main__":
    main()
