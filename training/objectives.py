"""Training objectives: causal LM, Dream masked diffusion, and infilling-aware diffusion.

Masked diffusion follows Dream / LLaDA (Nie et al. 2025, eq. 3): t ~ U(eps, 1), each token masked
with probability t, cross-entropy on masked tokens weighted by 1/t. Dream keeps next-token
alignment (hidden state i-1 predicts token i), which is what lets a causal LM be adapted into a
diffusion LM. Infilling examples teach the model to fill a hole of unknown length: the middle is
right-padded with ``<|dlm_pad|>`` to a canvas longer than it, only the canvas is masked.
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


def causal_lm_loss(model: DreamModel, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy with a causal attention mask. x: (B, L)."""
    logits = model(x[:, :-1], causal=True)  # (B, L-1, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    return loss, {"loss": loss.item()}


def masked_diffusion_loss(model: DreamModel, x: torch.Tensor, masked: torch.Tensor,
                          noisy: torch.Tensor, t: torch.Tensor,
                          eligible: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """1/t-weighted CE on masked positions, logits shifted (hidden i-1 predicts token i).

    x: clean ids (B, L); noisy: model input (B, L); masked: bool (B, L), never at position 0;
    t: mask ratio per row (B,); eligible: positions that could have been masked, per row (B,).
    """
    rows, cols = masked.nonzero(as_tuple=True)  # (M,), (M,)
    logits = model(noisy, select=(rows, cols - 1))  # (M, V)
    ce = F.cross_entropy(logits.float(), x[rows, cols], reduction="none")  # (M,)
    loss = (ce / t[rows]).sum() / eligible.sum()
    return loss, {"loss": loss.item(), "masked_ce": ce.mean().item(), "masked": int(rows.numel())}


def random_masking(x: torch.Tensor, sp: Specials, eps: float,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dream's forward process on whole sequences: returns (noisy, masked, t)."""
    B, L = x.shape
    t = eps + (1 - eps) * torch.rand(B, generator=gen)  # (B,)
    masked = torch.rand(B, L, generator=gen) < t[:, None]  # (B, L)
    masked[:, 0] = False
    noisy = torch.where(masked, torch.full_like(x, sp.mask_id), x)
    return noisy, masked, t


def line_starts(x_row: torch.Tensor, ends_line: torch.Tensor) -> torch.Tensor:
    """Indices i such that token i-1 ends a line (so i begins one). x_row: (L,)."""
    ends = ends_line[x_row]  # (L,)
    return (ends[:-1].nonzero(as_tuple=True)[0] + 1)


def infill_example(x_row: torch.Tensor, sp: Specials, ends_line: torch.Tensor, max_middle: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, int, int] | None:
    """Cut a middle out of a window and pad it: returns (sequence, canvas_start, canvas_len).

    The middle is 1..8 whole lines (70 %) or a random token span (30 %); the canvas is the middle
    plus 0..2*len+24 ``<|dlm_pad|>`` slots (an editor's canvas is often 2-4x the hole); the
    result is prefix + canvas + suffix, cut to len(x_row).
    """
    L = x_row.numel()
    r = torch.rand(3, generator=gen)
    starts = line_starts(x_row, ends_line)
    starts = starts[(starts > 8) & (starts < L - 16)]
    if r[0] < 0.7 and starts.numel() >= 2:
        i = int(torch.randint(starts.numel() - 1, (1,), generator=gen))
        n_lines = 1 if r[1] < 0.5 else int(torch.randint(2, 9, (1,), generator=gen))
        j = min(i + n_lines, starts.numel() - 1)
        a, b = int(starts[i]), int(starts[j])
    else:
        a = int(torch.randint(8, L - 16, (1,), generator=gen))
        b = a + 1 + int(torch.randint(min(max_middle, 48), (1,), generator=gen))
    b = min(b, a + max_middle)
    middle = x_row[a:b]
    extra = int(torch.randint(0, 2 * middle.numel() + 25, (1,), generator=gen))
    canvas = torch.cat([middle, torch.full((extra,), sp.pad_id, dtype=x_row.dtype)])
    seq = torch.cat([x_row[:a], canvas, x_row[b:]])[:L]
    if seq.numel() < L:  # the canvas is longer than what was cut: the window is shorter
        return None
    return seq, a, min(canvas.numel(), L - a)


def infill_batch(x: torch.Tensor, sp: Specials, ends_line: torch.Tensor, eps: float,
                 max_middle: int, gen: torch.Generator):
    """Infilling-shaped diffusion batch: only canvas slots are masked. Returns loss inputs."""
    B, L = x.shape
    seqs, masked = x.clone(), torch.zeros(B, L, dtype=torch.bool)
    t = eps + (1 - eps) * torch.rand(B, generator=gen)  # (B,)
    eligible = torch.full((B,), L - 1, dtype=torch.float32)
    for b in range(B):
        ex = infill_example(x[b], sp, ends_line, max_middle, gen)
        if ex is None:
            masked[b] = torch.rand(L, generator=gen) < t[b]
            masked[b, 0] = False
            continue
        seqs[b], start, n = ex
        m = torch.rand(n, generator=gen) < t[b]
        m[int(torch.randint(n, (1,), generator=gen))] = True  # at least one target
        masked[b, start:start + n] = m
        eligible[b] = n
    noisy = torch.where(masked, torch.full_like(seqs, sp.mask_id), seqs)
    return seqs, noisy, masked, t, eligible
