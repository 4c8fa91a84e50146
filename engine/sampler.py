"""Dream's ``diffusion_generate`` sampler, one step at a time.

A faithful re-implementation of ``DreamGenerationMixin._sample`` (Dream-7B / DiffuCoder
``generation_utils.py``; spec in shared/reference/diffucoder.md section 2): timesteps
``linspace(1, eps, steps + 1)``; at step i with t = ts[i], s = ts[i + 1] it commits
``int(M * (1 - s / t))`` masked positions (all of the rest at the last step), chosen by confidence
(``maskgit_plus``: max probability, ``topk_margin``: top1 - top2, ``entropy``: negative entropy),
by Gumbel-free sampling over confidences when ``alg_temp`` > 0, or at random with probability
``1 - s / t`` (``origin``). Logits are shifted right by one (hidden i-1 predicts token i).
The loop *yields* after every step, so callers render, cancel or record the decoding order.
Randomness comes only from the explicit ``torch.Generator``.

``block_length`` adds LLaDA's semi-autoregressive decoding (Nie et al. 2025, also the block
structure of Fast-dLLM): the canvas is cut into blocks of that many slots, decoded left to right,
each with its share of the steps and Dream's schedule inside it; positions are only committed in
the current block, but every forward pass still sees the whole canvas and the suffix.
``block_length=1`` with one step per slot is left-to-right decoding. ``None`` is upstream Dream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


class Denoiser(Protocol):
    """Anything that returns raw (unshifted) logits (B, L, V) for a whole canvas.

    A denoiser may also offer ``logits_at(x, (rows, cols), attention_mask, position_ids)``
    returning only those positions' logits (M, V): the LM head is then skipped for the prompt.
    """

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
               position_ids: torch.Tensor | None) -> torch.Tensor: ...


@dataclass
class SamplerSettings:
    """Dream's generation arguments (same names and meaning as ``DreamGenerationConfig``)."""

    steps: int = 32
    """Denoising steps (one forward pass each)."""
    alg: str = "entropy"
    """Which masked positions to commit: origin, maskgit_plus, topk_margin or entropy."""
    alg_temp: float | None = None
    """> 0 samples positions from softmax(confidence / alg_temp) instead of taking the top-k."""
    temperature: float = 0.0
    """Token temperature; 0 is greedy."""
    top_p: float | None = None
    """Nucleus filter."""
    top_k: int | None = None
    """Top-k filter."""
    eps: float = 1e-3
    """Final timestep of the schedule."""
    block_length: int | None = None
    """Semi-autoregressive blocks of this many canvas slots, left to right; None = one block."""

    def __post_init__(self) -> None:
        from engine.errors import ConfigError

        if self.alg not in ALGORITHMS:
            raise ConfigError(f"unknown --alg {self.alg!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")
        if self.block_length is not None and self.block_length < 1:
            raise ConfigError(f"--block-length must be at least 1, got {self.block_length}")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ConfigError(f"--alg-temp must be >= 0, got {self.alg_temp}")


@dataclass
class DenoiseStep:
    """The canvas after one denoising step."""

    step: int
    """0-based index of this step."""
    steps: int
    """Total number of steps."""
    x: torch.Tensor
    """(B, L) ids after this step (prompt and canvas)."""
    decoded: torch.Tensor
    """(B, L) bool: positions committed at this step."""


def _rng_device(gen: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return gen.device if gen is not None else like.device


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cum > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token past the threshold
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_idx, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(logits: torch.Tensor, s: SamplerSettings, gen: torch.Generator | None,
                  confidence: str = "prob") -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, token) per row of ``logits`` (N, V). confidence: prob | margin | neg_entropy."""
    if s.temperature > 0:
        logits = logits / s.temperature
    if s.top_p is not None and s.top_p < 1:
        logits = top_p_filter(logits, s.top_p)
    if s.top_k is not None:
        logits = top_k_filter(logits, s.top_k)
    probs = torch.softmax(logits, dim=-1)  # (N, V)
    if s.temperature > 0 and probs.numel():
        x0 = torch.multinomial(probs.float().to(_rng_device(gen, probs)), 1,
                               generator=gen).squeeze(-1).to(probs.device)  # (N,)
        conf = torch.gather(probs, -1, x0[:, None]).squeeze(-1)  # (N,)
    else:
        conf, x0 = probs.max(dim=-1)
    if confidence == "margin":
        top2 = torch.sort(probs, dim=-1, descending=True)[0]
        conf = top2[:, 0] - top2[:, 1]
    elif confidence == "neg_entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, x0


def num_transfer_tokens(mask_index: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                        last: bool) -> int:
    """Dream's per-step count: int(M * (1 - s / t)) with M the batch-average mask count.

    Computed in float32 tensor arithmetic exactly as upstream, so truncation matches bit for bit.
    """
    n_masked = mask_index.sum() / mask_index.shape[0]
    return int(n_masked) if last else int(n_masked * (1 - s / t))


def shifted_logits(denoiser: Denoiser, x: torch.Tensor, attention_mask, position_ids):
    logits = denoiser.logits(x, attention_mask, position_ids)  # (B, L, V)
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, L, V): row i predicts x[i]


def masked_logits(denoiser: Denoiser, x: torch.Tensor, mask_index: torch.Tensor,
                  attention_mask=None, position_ids=None) -> torch.Tensor:
    """Shifted logits at the ``mask_index`` positions only, (M, V), in boolean-index order."""
    at = getattr(denoiser, "logits_at", None)
    if at is None:
        return shifted_logits(denoiser, x, attention_mask, position_ids)[mask_index]
    rows, cols = mask_index.nonzero(as_tuple=True)
    return at(x, (rows, (cols - 1).clamp(min=0)), attention_mask, position_ids)


def origin_step(x, mask_index, mlogits, p_transfer, s, mask_id, gen):
    x0 = torch.full((int(mask_index.sum()),), mask_id, dtype=torch.long, device=x.device)
    transfer = torch.rand(x0.shape, generator=gen, device=_rng_device(gen, x)).to(x.device) \
        < p_transfer
    if transfer.any():
        _, x0[transfer] = sample_tokens(mlogits[transfer], s, gen)
    x[mask_index] = x0


def confidence_step(x, mask_index, mlogits, k, s, mask_id, gen):
    kind = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy"}[s.alg]
    conf, x0 = sample_tokens(mlogits, s, gen, kind)
    if k <= 0:
        return
    full_conf = torch.full(x.shape, -torch.inf, dtype=mlogits.dtype, device=x.device)
    full_conf[mask_index] = conf.to(mlogits.dtype)
    if not s.alg_temp:
        idx = torch.topk(full_conf, k).indices  # (B, k)
    else:
        weights = F.softmax(full_conf / s.alg_temp, dim=-1)
        idx = torch.multinomial(weights.float().to(_rng_device(gen, x)), k,
                                generator=gen).to(x.device)  # (B, k)
    cand = torch.full_like(x, mask_id)
    cand[mask_index] = x0
    rows = torch.arange(x.size(0), device=x.device)[:, None].expand_as(idx)
    x[rows, idx] = cand[rows, idx]


def block_plan(x: torch.Tensor, mask_id: int, steps: int,
               block_length: int | None) -> list[tuple[int, int, int]]:
    """(start, end, steps) per block over the masked span of ``x``; steps are shared out evenly
    (earlier blocks get the remainder), at least one per block."""
    if not block_length:
        return [(0, x.size(1), steps)]
    cols = (x == mask_id).any(0).nonzero(as_tuple=True)[0]
    if cols.numel() == 0:
        return [(0, x.size(1), steps)]
    lo, hi = int(cols.min()), int(cols.max()) + 1
    starts = list(range(lo, hi, block_length))
    base, extra = divmod(max(steps, len(starts)), len(starts))
    return [(a, min(a + block_length, hi), base + (j < extra)) for j, a in enumerate(starts)]


def denoise(denoiser: Denoiser, x: torch.Tensor, mask_id: int, settings: SamplerSettings,
            generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None) -> Iterator[DenoiseStep]:
    """Denoise every ``mask_id`` slot of ``x`` (B, L) in ``settings.steps`` steps, yielding each.

    ``x`` is modified in place and also returned in each yielded step (cloned), so a caller that
    stops iterating (cancellation) simply stops the loop between two forward passes. With
    ``block_length`` the step count is at least the number of blocks.
    """
    s = settings
    plan = block_plan(x, mask_id, s.steps, s.block_length)
    total, i = sum(n for _, _, n in plan), 0
    for a, b, n_steps in plan:
        timesteps = torch.linspace(1, s.eps, n_steps + 1)
        for j in range(n_steps):
            mask_index = x == mask_id  # (B, L)
            mask_index[:, :a] = False
            mask_index[:, b:] = False
            before = mask_index.clone()
            mlogits = masked_logits(denoiser, x, mask_index, attention_mask, position_ids)
            t, s_next = timesteps[j], timesteps[j + 1]
            last = j == n_steps - 1
            if s.alg == "origin":
                p_transfer = 1 if last else 1 - s_next / t
                origin_step(x, mask_index, mlogits, p_transfer, s, mask_id, generator)
            else:
                k = num_transfer_tokens(mask_index.cpu(), t, s_next, last)
                confidence_step(x, mask_index, mlogits, k, s, mask_id, generator)
            yield DenoiseStep(i, total, x.clone(), before & (x != mask_id))
            i += 1
