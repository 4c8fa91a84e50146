"""The variance of coupled-GRPO's log-likelihood estimate against a random mask and d1's fully
masked estimate, at an equal number of forward passes, side by side in one run.

    .venv/bin/python benchmarks/grpo_variance.py [--model M] [--completions 12] [--draws 32]

The completions are real code: the middle lines of this repository's own files, each scored
with its file around it (prefix and suffix), as a rollout is scored in ``unmask train grpo``.
Each estimator gets 2 sequence forward passes per completion per draw:
  coupled   the complementary pair v1 (ratio t) and v2 (the complement, 1 - t), t ~ U(0.2, 0.8):
            every completion token is scored once, lp / t or lp / (1 - t); halved, so that it
            estimates the same quantity as the next row;
  random    two independent masks, each of its own t ~ U(0.2, 0.8): a token scores lp / t when
            masked and 0 otherwise; the two averaged (the paper's "decoupled" ablation);
  d1        the completion fully masked and 15 % of the prompt masked, twice, averaged (a
            different, biased quantity: its mean is printed too).
The full coupled-GRPO score adds the deterministic fully masked term (v0) to the pair and
halves it, so its variance is a quarter of the pair's and the ratio against the random pair
with v0 added is the same ratio. Variance is taken across ``--draws`` mask draws, per token
(then averaged over tokens) and for the completion's sum (then averaged over completions).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def completions(engine, n: int, window: int = 384) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids (L,), completion (L,) bool) for ``n`` 1-3 line middles of this repository's files."""
    from engine.window import infill_ids

    files = sorted((ROOT / "engine").glob("*.py")) + sorted((ROOT / "training").glob("*.py"))
    out = []
    for k, f in enumerate(files):
        lines = f.read_text().splitlines(keepends=True)
        if len(lines) < 60:
            continue
        at, size = len(lines) // 2, 1 + k % 3
        middle = engine.tokenizer.encode("".join(lines[at:at + size])) + [engine.eos_id]
        pre, suf, _ = infill_ids(engine.tokenizer, "".join(lines[:at]),
                                 "".join(lines[at + size:]), "", window)
        ids = engine._start(pre) + middle + suf
        comp = [False] * len(engine._start(pre)) + [True] * len(middle) + [False] * len(suf)
        out.append((torch.tensor(ids), torch.tensor(comp)))
        if len(out) == n:
            break
    return out


def main() -> None:
    from engine.api import Engine
    from training.coupled import (coupled_masks, full_mask_scores, mask_ratio, mask_uniforms,
                                  masked_only_scores, view_logps)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--completions", type=int, default=12)
    ap.add_argument("--draws", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    engine = Engine.load(args.model, device="cpu", dtype="float32")
    model = engine.denoiser.loaded.model.eval()
    mask_id = engine.mask_id
    data = completions(engine, args.completions)
    names = ("coupled", "random", "d1")
    per_token = {k: [] for k in names}  # per completion: (draws, M)
    seconds = {k: 0.0 for k in names}

    def timed(name, fn):
        began = time.perf_counter()
        value = fn()
        seconds[name] += time.perf_counter() - began
        return value

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for c, (ids, comp) in enumerate(data):
            ids, comp = ids[None], comp[None]
            rows = {k: [] for k in names}
            for d in range(args.draws):
                seed = 1000 * c + d

                def coupled():
                    t = mask_ratio(seed)
                    m1, m2 = coupled_masks(comp, t, mask_uniforms(seed, [0], ids.shape[1]))
                    views = torch.cat([ids.masked_fill(m1, mask_id), ids.masked_fill(m2, mask_id)])
                    lp = view_logps(model, views, ids, comp).float()  # (2, M)
                    return torch.where(m1[comp], lp[0] / t, lp[1] / (1 - t)) / 2

                def random_pair():
                    est = [masked_only_scores(model, ids, comp, mask_ratio(seed * 7 + j),
                                              mask_uniforms(seed * 7 + j, [0], ids.shape[1]),
                                              mask_id)[comp] for j in (1, 2)]
                    return (est[0] + est[1]) / 2

                def d1():
                    gen = torch.Generator().manual_seed(seed)
                    est = [full_mask_scores(model, ids, comp, mask_id, 0.15, gen)[comp]
                           for _ in range(2)]
                    return (est[0] + est[1]) / 2

                rows["coupled"].append(timed("coupled", coupled))
                rows["random"].append(timed("random", random_pair))
                rows["d1"].append(timed("d1", d1))
            for k in names:
                per_token[k].append(torch.stack(rows[k]))  # (draws, M)
    tokens = sum(int(c.sum()) for _, c in data)
    print(f"{len(data)} completions ({tokens} tokens) from this repository's files, "
          f"{args.draws} mask draws each, 2 forward passes per estimate\n")
    stats = {}
    for k in names:
        stats[k] = (torch.cat([x.mean(0) for x in per_token[k]]).mean().item(),
                    torch.cat([x.var(0) for x in per_token[k]]).mean().item(),
                    torch.stack([x.sum(1).var() for x in per_token[k]]).mean().item())
    print("| estimator | mean per token | var per token | var of the sum | vs random | "
          "ms per estimate |\n|---|---:|---:|---:|---:|---:|")
    _, rand_tok, rand_sum = stats["random"]
    for k in names:
        mean, var_tok, var_sum = stats[k]
        ms = 1000 * seconds[k] / (len(data) * args.draws)
        print(f"| {k} | {mean:.3f} | {var_tok:.3f} | {var_sum:.2f} | {var_tok / rand_tok:.2f}x "
              f"/ {var_sum / rand_sum:.2f}x | {ms:.0f} |")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          "'vs random' = per-token / sum variance ratio (target: coupled <= 0.5x)")


if __name__ == "__main__":
    main()
