"""Training objectives: causal LM, Dream masked diffusion, and infilling-aware diffusion.

Masked diffusion follows Dream / LLaDA (Nie et al. 2025, eq. 3): t ~ U(eps, 1), each token masked
with probability t, cross-entropy on masked tokens weighted by 1/t. Dream keeps next-token
alignment (hidden state i-1 predicts token i), which is what lets a causal LM be adapted into a
diffusion LM. Infilling examples teach the model to fill a hole of unknown length: the middle is
right-padded (``canvas_padding``) to a canvas longer than it, only the canvas is masked.
Every loss returns (loss, detached stats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.model import DreamModel


@dataclass
class Specials:
    mask_id: int
    pad_id: int
    eos_id: int
    pad_cycle: tuple[int, ...] = ()
    """Rainbow padding (Kim et al., ICLR 2026): a canvas's unused slots are one ``pad_id`` (the
    end) and then this cycle of distinct tokens, so no single token takes the probability of
    every slot past the answer and spreads backwards over the answer ("<eos> overflow").
    Empty: every unused slot is ``pad_id``."""


def canvas_padding(n: int, sp: Specials) -> list[int]:
    """The ``n`` ids after a middle in its canvas: ``pad_id`` then the cycle (or ``pad_id`` * n)."""
    if not sp.pad_cycle:
        return [sp.pad_id] * n
    return [sp.pad_id][:n] + [sp.pad_cycle[k % len(sp.pad_cycle)] for k in range(n - 1)]


def causal_lm_loss(model: DreamModel, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy with a causal attention mask. x: (B, L)."""
    logits = model(x[:, :-1], causal=True)  # (B, L-1, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    return loss, {"loss": loss.item()}


@dataclass
class Parent:
    """Distillation from the frozen AR parent: on masked positions the loss becomes
    ``(1 - weight) * CE + weight * KL(parent || model)``, the parent reading the clean text
    causally (with Dream's shift its logits at i-1 are its next-token prediction for token i).
    Keeps the adapted model close to what the parent knew while it learns the suffix (the
    "stay close to the AR model" finding of Efficient-DLM; stage 2 of issue 22 lost it)."""

    model: DreamModel
    weight: float


def masked_diffusion_loss(model: DreamModel, x: torch.Tensor, masked: torch.Tensor,
                          noisy: torch.Tensor, t: torch.Tensor, eligible: torch.Tensor,
                          attention_mask: torch.Tensor | None = None,
                          parent: Parent | None = None, parent_ok: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, dict]:
    """1/t-weighted CE on masked positions, logits shifted (hidden i-1 predicts token i).

    x: clean ids (B, L); noisy: model input (B, L); masked: bool (B, L), never at position 0;
    t: mask ratio per row (B,); eligible: positions that could have been masked, per row (B,);
    attention_mask: optional (B, 1, L, L) bool, for right-padded batches;
    parent: optional distillation (see ``Parent``), on the masked positions where ``parent_ok``
    (B, L) holds (all of them if None).
    """
    rows, cols = masked.nonzero(as_tuple=True)  # (M,), (M,)
    logits = model(noisy, attention_mask, select=(rows, cols - 1))  # (M, V)
    ce = F.cross_entropy(logits.float(), x[rows, cols], reduction="none")  # (M,)
    loss = (ce / t[rows]).sum() / eligible.sum()
    stats = {"loss": loss.item(), "masked_ce": ce.mean().item(), "masked": int(rows.numel())}
    if parent is None or parent.weight <= 0:
        return loss, stats
    keep = parent_ok[rows, cols] if parent_ok is not None else torch.ones_like(rows, dtype=bool)
    r, c = rows[keep], cols[keep]
    with torch.no_grad():
        target = F.log_softmax(parent.model(x, causal=True, select=(r, c - 1)).float(), -1)
    kl = F.kl_div(F.log_softmax(logits[keep].float(), -1), target, log_target=True,
                  reduction="none").sum(-1)  # (K,) KL(parent || model)
    kl_loss = (kl / t[r]).sum() / eligible.sum()
    stats["parent_kl"] = kl.mean().item() if kl.numel() else 0.0
    return (1 - parent.weight) * loss + parent.weight * kl_loss, stats


def before_first(seqs: torch.Tensor, token: int) -> torch.Tensor:
    """Bool (B, L): positions i with no ``token`` in seqs[:, :i+1] (a causal reader of the row
    has seen no canvas padding up to and including i)."""
    return (seqs == token).cumsum(1) == 0


def random_masking(x: torch.Tensor, sp: Specials, eps: float,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dream's forward process on whole sequences: returns (noisy, masked, t)."""
    B, L = x.shape
    t = eps + (1 - eps) * torch.rand(B, generator=gen)  # (B,)
    masked = torch.rand(B, L, generator=gen) < t[:, None]  # (B, L)
    masked[:, 0] = False
    noisy = torch.where(masked, torch.full_like(x, sp.mask_id), x)
    return noisy, masked, t


def newline_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool per id: does the token's text hold a newline (a line boundary of a GPT-2 BPE)."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        table[i] = "\n" in tokenizer.decode([i])
    return table


def line_starts(x_row: torch.Tensor, ends_line: torch.Tensor,
                at_newline: bool = False) -> torch.Tensor:
    """Indices i such that token i-1 ends a line (so i begins one). x_row: (L,).

    ``at_newline``: for tokenizers that merge a newline with the next line's indentation
    (GPT-2-style BPE: "\n   " is one token), the line boundary is the newline token itself,
    so the index i of each token that holds a newline (``ends_line`` = "holds a newline")."""
    ends = ends_line[x_row]  # (L,)
    if at_newline:
        return ends[1:].nonzero(as_tuple=True)[0] + 1
    return (ends[:-1].nonzero(as_tuple=True)[0] + 1)


def pick_hole(x_row: torch.Tensor, starts: torch.Tensor, max_middle: int,
              gen: torch.Generator, single_line: float = 0.5,
              span: tuple[int, int] | None = None) -> tuple[int, int]:
    """One middle [a, b): 1..8 whole lines (70 %) or a random token span (30 %) starting in
    ``span`` (default [8, L - 16)). A line hole is exactly one line with probability
    ``single_line`` (the editors' most frequent request, the inline completion of the current
    line), else 2..8 lines."""
    L = x_row.numel()
    lo, hi = span or (8, L - 16)
    r = torch.rand(2, generator=gen)
    if r[0] < 0.7 and starts.numel() >= 2:
        i = int(torch.randint(starts.numel() - 1, (1,), generator=gen))
        n_lines = 1 if r[1] < single_line else int(torch.randint(2, 9, (1,), generator=gen))
        j = min(i + n_lines, starts.numel() - 1)
        a, b = int(starts[i]), int(starts[j])
    else:
        a = int(torch.randint(lo, hi, (1,), generator=gen))
        b = a + 1 + int(torch.randint(min(max_middle, 48), (1,), generator=gen))
    return a, min(b, a + max_middle)


def infill_example(x_row: torch.Tensor, sp: Specials, ends_line: torch.Tensor, max_middle: int,
                   gen: torch.Generator, holes: int = 1, at_newline: bool = False,
                   single_line: float = 0.5, lo: int = 0
                   ) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
    """Cut up to ``holes`` disjoint middles out of a window and pad each one: returns
    (sequence, [(canvas_start, canvas_len), ...]).

    Each canvas is its middle plus 0..2*len+24 padding slots (``canvas_padding``; an editor's
    canvas is often 2-4x the hole); the result is the window with every middle replaced by its
    canvas, cut to len(x_row) (canvases pushed past the end are dropped). Several holes per
    window give the infilling batches several times the supervised slots for the same forward
    pass; at least 8 clean tokens separate two holes. ``single_line``: see ``pick_hole``.
    ``lo`` > 0: every hole starts at or after ``lo`` and may reach the window's last line (the
    parent's continuation, ``training.parent_lines``: the lines after a hole are its suffix).
    """
    L = x_row.numel()
    starts = line_starts(x_row, ends_line, at_newline)
    span = None
    if lo > 0:
        starts, span = starts[starts >= lo], (lo, max(lo + 1, L - 2))
    else:
        starts = starts[(starts > 8) & (starts < L - 16)]
    chosen: list[tuple[int, int]] = []
    for _ in range(holes):
        a, b = pick_hole(x_row, starts, max_middle, gen, single_line, span)
        if all(b + 8 <= c or d + 8 <= a for c, d in chosen):
            chosen.append((a, b))
    pieces, spans, cursor, pos = [], [], 0, 0
    for a, b in sorted(chosen):
        middle = x_row[a:b]
        extra = int(torch.randint(0, 2 * middle.numel() + 25, (1,), generator=gen))
        canvas = torch.cat([middle, torch.tensor(canvas_padding(extra, sp), dtype=x_row.dtype)])
        pieces += [x_row[cursor:a], canvas]
        pos += a - cursor
        if pos < L:
            spans.append((pos, min(canvas.numel(), L - pos)))
        pos, cursor = pos + canvas.numel(), b
    seq = torch.cat(pieces + [x_row[cursor:]])[:L]
    return (seq, spans) if spans else None


def infill_batch(x: torch.Tensor, sp: Specials, ends_line: torch.Tensor, eps: float,
                 max_middle: int, gen: torch.Generator, max_holes: int = 1,
                 at_newline: bool = False, single_line: float = 0.5,
                 lo: list[int] | None = None):
    """Infilling-shaped diffusion batch (1..max_holes holes per row): only canvas slots are
    masked. Returns loss inputs. ``at_newline``: see ``line_starts``; ``single_line``: see
    ``pick_hole``; ``lo``: per row, see ``infill_example``."""
    B, L = x.shape
    seqs, masked = x.clone(), torch.zeros(B, L, dtype=torch.bool)
    t = eps + (1 - eps) * torch.rand(B, generator=gen)  # (B,)
    eligible = torch.full((B,), L - 1, dtype=torch.float32)
    for b in range(B):
        ex = infill_example(x[b], sp, ends_line, max_middle, gen,
                            holes=int(torch.randint(1, max_holes + 1, (1,), generator=gen)),
                            at_newline=at_newline, single_line=single_line,
                            lo=lo[b] if lo else 0)
        if ex is None:
            masked[b] = torch.rand(L, generator=gen) < t[b]
            masked[b, 0] = False
            continue
        seqs[b], spans = ex
        for start, n in spans:
            masked[b, start:start + n] = torch.rand(n, generator=gen) < t[b]
        start, n = spans[int(torch.randint(len(spans), (1,), generator=gen))]
        masked[b, start + int(torch.randint(n, (1,), generator=gen))] = True  # one target at least
        eligible[b] = sum(n for _, n in spans)
    noisy = torch.where(masked, torch.full_like(seqs, sp.mask_id), seqs)
    return seqs, noisy, masked, t, eligible


@torch.no_grad()
def masked_ce_sum(model: DreamModel, windows: list[torch.Tensor], t: float, mask_id: int,
                  gen: torch.Generator) -> tuple[float, int]:
    """(summed CE in nats, masked tokens) with each token of ``windows`` masked with probability
    ``t`` (position 0 never: nothing predicts it). The held-out metric of pretraining and
    ``unmask eval loss``; comparable across runs for a fixed generator seed."""
    total, count = 0.0, 0
    for x in windows:
        masked = torch.rand(x.shape, generator=gen) < t  # (B, L)
        masked[:, 0] = False
        noisy = torch.where(masked, torch.full_like(x, mask_id), x)  # (B, L)
        rows, cols = masked.nonzero(as_tuple=True)
        dev = next(model.parameters()).device
        logits = model(noisy.to(dev), select=(rows.to(dev), (cols - 1).to(dev)))  # (M, V)
        total += F.cross_entropy(logits.float(), x[rows, cols].to(dev), reduction="sum").item()
        count += rows.numel()
    return total, count
