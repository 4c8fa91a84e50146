"""Several infills denoised together in one batch: one forward pass per step for all of them.

Rows are laid out so that every canvas occupies the same columns: ``[pads][prefix][canvas]
[suffix][pads]``; the pads are hidden from attention and skipped by the positions with Dream's
batch padding mask (``sampler.padding_inputs``, as upstream ``_sample`` builds it), so each row
computes what it would alone. Aligned canvases of one size make every row's schedule the same,
so the one sampler serves the batch unchanged. Canvases are fixed-size here (the adaptive probe
would give each row its own size); a row whose stop string has settled keeps its result while
the others finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch

from engine.healing import plan_healing
from engine.sampler import denoise, padding_inputs


@dataclass
class BatchStep:
    """The canvases after one step, one list of ids per request."""

    step: int
    steps: int
    canvases: list[list[int]]
    done: list[bool]
    """Rows whose result is final (their stop settled)."""


def infill_batch(engine, holes: list[tuple[str, str, str]], settings
                 ) -> Iterator[BatchStep | list]:
    """Denoise ``holes`` ((prefix, suffix, context) each) together with ``settings`` (fixed
    canvas of ``max_new_tokens``); yields a ``BatchStep`` per step, then a list of
    ``Completion`` in the order of ``holes``. Closing the generator cancels between steps."""
    from engine.api import Completion

    start = time.perf_counter()
    n = settings.max_new_tokens
    pres, sufs, notes = [], [], []
    heals = [plan_healing(engine.tokenizer, prefix, suffix) for prefix, suffix, _ in holes]
    for prefix, suffix, context in holes:
        pre, suf, note = engine.infill_prompt(prefix, suffix, n, context)
        pres.append(pre)
        sufs.append(suf)
        notes.append(note)
    P, S = max(map(len, pres)), max(map(len, sufs))
    rows, keep = [], []
    for pre, suf in zip(pres, sufs):
        left, right = P - len(pre), S - len(suf)
        rows.append([engine.eos_id] * left + pre + [engine.mask_id] * n + suf +
                    [engine.eos_id] * right)
        keep.append([0] * left + [1] * (len(pre) + n + len(suf)) + [0] * right)
    x = torch.tensor(rows, dtype=torch.long, device=engine.device)  # (B, L)
    attn, pos = padding_inputs(torch.tensor(keep, device=engine.device))
    gen = torch.Generator(device=engine.device if engine.device.type != "mps" else "cpu")
    gen.manual_seed(settings.seed)
    B = len(holes)
    final: list[list[int] | None] = [None] * B
    orders = [[-1] * n for _ in range(B)]
    steps_at = [0] * B
    for st in denoise(engine.denoiser, x, engine.mask_id, settings.sampler(settings.steps), gen,
                      attn.to(engine.device) if attn is not None else None,
                      pos.to(engine.device) if pos is not None else None):
        canvases = st.x[:, P:P + n].tolist()
        for b in range(B):
            if final[b] is not None:
                continue
            for j in st.decoded[b, P:P + n].nonzero(as_tuple=True)[0].tolist():
                orders[b][j] = st.step
            steps_at[b] = st.step + 1
            if (engine.mask_id not in canvases[b]) or (
                    (settings.stop or settings.stop_loops)
                    and engine._stops(engine.settled(canvases[b]), settings, False,
                                      heals[b])):
                final[b] = canvases[b]
        yield BatchStep(st.step, st.steps, canvases, [f is not None for f in final])
        if all(f is not None for f in final):
            break
    elapsed = time.perf_counter() - start
    out = []
    for b in range(B):
        ids = final[b] if final[b] is not None else x[b, P:P + n].tolist()
        extra = {"forward_passes": steps_at[b], "batch": B, **({"note": notes[b]} if notes[b]
                                                                else {})}
        text = engine.text_of(ids, settings, False, extra, heals[b])
        completion = Completion(text, ids, orders[b], steps_at[b], n, elapsed,
                                len(pres[b]) + len(sufs[b]), extra)
        if settings.limit_scope:  # as a request alone is cut (a block asked by an editor)
            engine.cut_to_scope(completion, *holes[b][:2])
        out.append(completion)
    yield out

