"""Fast decoding against vanilla decoding, side by side in one run.

    .venv/bin/python benchmarks/decode_speed.py [--news 16,32,64,128,256] [--prompts 8]
        [--big] [--big-news 16,64]

For each canvas size, batch 1, on the embedded model (and with ``--big`` on a random model of
Qwen2.5-0.5B's shape in bf16, to show how the gains scale toward 7B): forward passes, wall
time, tokens/s, time to the first visible token (the canvas's first slot decoded) and the
share of outputs identical to vanilla, over the same infill prompts (real code around a hole,
taken from this repository's own files). Vanilla is the model's own default (the embedded
model: left to right, one token per pass, everything recomputed every pass). Quality on
HumanEval comes from ``unmask eval`` with the same flags (README).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "vanilla": {},
    "threshold 0.9": {"alg": "confidence_threshold", "threshold": 0.9, "block_length": 32},
    "eb 0.1": {"alg": "eb", "gamma": 0.1, "block_length": 32},
    "cache": {"cache_refresh": 8},
    "threshold 0.9 + cache": {"alg": "confidence_threshold", "threshold": 0.9,
                              "block_length": 32, "cache_refresh": 4},
    "eb 0.1 + cache": {"alg": "eb", "gamma": 0.1, "block_length": 32, "cache_refresh": 4},
}


def prompts(n: int) -> list[tuple[str, str]]:
    """Holes at line starts of real files: ~40 lines before, ~15 after."""
    files = sorted((ROOT / "engine").glob("*.py")) + sorted((ROOT / "training").glob("*.py"))
    out = []
    for f in files:
        lines = f.read_text().splitlines(keepends=True)
        if len(lines) < 80:
            continue
        at = len(lines) // 2
        out.append(("".join(lines[at - 40:at]), "".join(lines[at + 1:at + 16])))
        if len(out) == n:
            break
    return out


def big_engine():
    """A random Dream model of Qwen2.5-0.5B's shape (bf16), with the embedded tokenizer."""
    from engine.api import Engine, SpecialIds, TorchDenoiser
    from engine.loading import REPO_MODELS, LoadedModel
    from engine.model import DreamConfig, DreamModel
    from engine.tokenizer import DreamTokenizer

    cfg = DreamConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                      num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = DreamModel(cfg).to(torch.bfloat16).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    folder = REPO_MODELS / "unmask-coder-8m"  # a tokenizer with <|dlm_pad|>, as Dream's has
    tok = DreamTokenizer.from_folder(folder)
    loaded = LoadedModel(folder, cfg, model, torch.device("cpu"), torch.bfloat16)
    ids = SpecialIds(tok.token_id("<|mask|>"), tok.token_id("<|endoftext|>"),
                     tok.token_id("<|dlm_pad|>"), cfg.max_position_embeddings)
    return Engine(folder, tok, TorchDenoiser(loaded), ids, loaded.device, "torch", "bfloat16",
                  defaults={"block_length": 1, "alg": "entropy"})


def run(engine, holes, new: int, overrides: dict):
    rows = []
    for prefix, suffix in holes:
        s = engine.settings(max_new_tokens=new, steps=new, length="fixed", **overrides)
        t = time.perf_counter()
        res = engine.infill(prefix, suffix, s)
        rows.append((time.perf_counter() - t, res))
    return rows


def table_for(name: str, engine, holes, news: list[int]):
    from rich.table import Table

    table = Table(title=f"{name}: batch 1, {len(holes)} prompts, medians")
    for col in ("new", "decoding", "passes", "wall s", "tok/s", "first token s", "speed-up",
                "identical"):
        table.add_column(col, justify="right")
    for new in news:
        base = None
        for label, overrides in CONFIGS.items():
            rows = run(engine, holes, new, overrides)
            wall = statistics.median(w for w, _ in rows)
            passes = statistics.median(r.extra["forward_passes"] for _, r in rows)
            first = statistics.median(r.extra["first_token_s"] or w for w, r in rows)
            if base is None:
                base = (wall, [r.token_ids for _, r in rows])
            same = sum(r.token_ids == b for (_, r), b in zip(rows, base[1])) / len(rows)
            table.add_row(str(new), label, f"{passes:.0f}", f"{wall:.3f}", f"{new / wall:.0f}",
                          f"{first:.3f}", f"{base[0] / wall:.1f}x", f"{same:.0%}")
    return table


def main() -> None:
    from rich.console import Console

    from engine.api import Engine

    ap = argparse.ArgumentParser()
    ap.add_argument("--news", default="16,32,64,128,256")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--big", action="store_true", help="also the 0.5B-shaped random model")
    ap.add_argument("--big-news", default="16,64")
    ap.add_argument("--big-prompts", type=int, default=2)
    args = ap.parse_args()
    console = Console()
    holes = prompts(args.prompts)
    engine = Engine.load(device="cpu")
    console.print(table_for(f"{engine.name} ({engine.dtype})", engine, holes,
                            [int(n) for n in args.news.split(",")]))
    if args.big:
        console.print(table_for("random Qwen2.5-0.5B shape (bf16)", big_engine(),
                                holes[:args.big_prompts],
                                [int(n) for n in args.big_news.split(",")]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"peak RSS {peak:.0f} MiB; {torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
