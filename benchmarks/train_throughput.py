"""Training throughput of the pretraining loop, eager (the wave-1 loop) against compiled, side
by side in one run.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--warmup 10] [--batch 8]
        [--seq 512] [--threads 2] [--phase diffusion|causal] [--profile]

Each configuration runs the real ``training.pretrain.train`` loop in its own process (so peak
memory is its own), continuing the embedded model at batch x seq tokens per step in bf16
autocast, and is timed over the steps after ``--warmup`` (which absorb torch.compile's
compilation; its cost is reported as warm-up). Data: ``data/tokens`` when it exists (built by
``unmask train corpus`` and ``unmask train tokenizer``), else this repository's own Python
files encoded with the embedded tokenizer. Nothing else should run on the machine meanwhile:
on 2 cores a second busy process slows a training step several times.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "unmask-coder-8m"
CONFIGS = {"eager (wave-1 loop)": {"compile": False}, "torch.compile": {"compile": True}}


def token_files(out: Path) -> Path:
    """A folder with train.bin / val.bin: the real corpus's, or this repository's code."""
    real = ROOT / "data" / "tokens"
    if (real / "train.bin").exists() and (real / "val.bin").exists():
        return real
    from engine.tokenizer import DreamTokenizer

    tok = DreamTokenizer.from_folder(MODEL)
    ids: list[int] = []
    for path in sorted(ROOT.rglob("*.py")):
        if ".venv" not in path.parts:
            ids += tok.encode(path.read_text(encoding="utf-8")) + [0]
    arr = np.asarray(ids, dtype=np.uint16)
    out.mkdir(parents=True, exist_ok=True)
    arr.tofile(out / "train.bin")
    arr[: max(len(arr) // 10, 4096)].tofile(out / "val.bin")
    return out


def child(args: argparse.Namespace) -> None:
    """Run the loop once and print its timing as JSON (the parent reads the last line)."""
    from training.pretrain import TrainConfig, train

    shape = tomllib.loads((ROOT / "training" / "configs" / "continue.toml").read_text())["model"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out_dir=tmp, data_dir=args.data, tokenizer_dir=str(MODEL),
                          init_from=str(MODEL), model=shape,
                          seq_len=args.seq, batch_size=args.batch,
                          causal_fraction=1.0 if args.phase == "causal" else 0.0,
                          max_steps=args.steps, budget_minutes=600, log_every=1, eval_every=0,
                          eval_batches=1, threads=args.threads, checkpoint_minutes=1e9,
                          compile=args.compile)
        records: list[dict] = []
        profiler = None

        def progress(record: dict) -> None:
            nonlocal profiler
            records.append(record)
            if args.profile and record["step"] == args.warmup:
                from torch.profiler import ProfilerActivity, profile

                profiler = profile(activities=[ProfilerActivity.CPU])
                profiler.__enter__()
            elif profiler is not None and record["step"] == args.warmup + 3:
                profiler.__exit__(None, None, None)
                print(profiler.key_averages().table(sort_by="self_cpu_time_total",
                                                    row_limit=12), file=sys.stderr)
                profiler = None

        train(cfg, progress=progress)
    warm = records[args.warmup - 1]
    last = records[-1]
    seconds = (last["elapsed_min"] - warm["elapsed_min"]) * 60
    tokens = last["tokens"] - warm["tokens"]
    print(json.dumps({"tok_per_s": tokens / seconds, "ms_per_step":
                      1000 * seconds / (last["step"] - warm["step"]),
                      "warmup_s": warm["elapsed_min"] * 60,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _table(stderr: str) -> str:
    """The profiler's table out of the child's stderr."""
    lines = stderr.splitlines()
    start = next((i for i, x in enumerate(lines) if x.startswith("---")), len(lines))
    return "\n".join(lines[start:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phase", choices=("diffusion", "causal"), default="diffusion")
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's table of 3 steps after the warm-up "
                         "(those steps then run slower)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup >= args.steps:
        sys.exit("benchmarks/train_throughput.py: --warmup must be below --steps")
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = token_files(Path(tmp) / "tokens")
        print(f"{args.phase} steps of {args.batch} x {args.seq} tokens, bf16 autocast, "
              f"{args.threads} threads; timed over steps {args.warmup + 1}-{args.steps} "
              f"(data: {data})\n")
        print("| loop | tokens/s | ms/step | warm-up s | peak RSS MB |\n|---|---:|---:|---:|---:|")
        base = None
        for name, opts in CONFIGS.items():
            cmd = [sys.executable, __file__, "--child", "--data", str(data), "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                   "--seq", str(args.seq), "--threads", str(args.threads), "--phase", args.phase]
            cmd += ["--compile"] if opts["compile"] else []
            cmd += ["--profile"] if args.profile else []
            run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if run.returncode:
                sys.exit(f"{name} failed:\n{run.stderr[-2000:]}")
            r = json.loads(run.stdout.strip().splitlines()[-1])
            if args.profile:
                print(f"\n{name}:\n{_table(run.stderr)}", file=sys.stderr)
            base = base or r["tok_per_s"]
            print(f"| {name} | {r['tok_per_s']:,.0f} ({r['tok_per_s'] / base:.2f}x) | "
                  f"{r['ms_per_step']:.0f} | {r['warmup_s']:.0f} | {r['peak_rss_mb']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
