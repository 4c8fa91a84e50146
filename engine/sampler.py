"""Dream's ``diffusion_generate`` sampler, one step at a time.

A faithful re-implementation of ``DreamGenerationMixin._sample`` (``generation_utils.py`` of the
Dream-org/Dream-v0-Base-7B and apple/DiffuCoder-7B checkpoints on Hugging Face): timesteps
``linspace(1, eps, steps + 1)``; at step i with t = ts[i], s = ts[i + 1] it commits
``int(M * (1 - s / t))`` masked positions (all of the rest at the last step), chosen by confidence
(``maskgit_plus``: max probability, ``topk_margin``: top1 - top2, ``entropy``: negative entropy),
by Gumbel-free sampling over confidences when ``alg_temp`` > 0, or at random with probability
``1 - s / t`` (``origin``). Logits are shifted right by one (hidden i-1 predicts token i).
The loop *yields* after every step, so callers render, cancel or record the decoding order.
Randomness comes only from the explicit ``torch.Generator``.

``block_length`` adds LLaDA's semi-autoregressive decoding (Nie et al. 2025, also the block
structure of Fast-dLLM): the canvas is cut into blocks of that many slots, decoded left to right;
positions are only committed in the current block, but every forward pass still sees the whole
canvas and the suffix. The steps asked for are shared out over the blocks in proportion to their
slots, and inside a block LLaDA's ``get_num_transfer_tokens`` splits the slots evenly over its
steps, so every forward pass commits at least one token (Dream's truncating schedule, restarted in
each block, wasted most passes). ``block_length=1`` is left-to-right decoding; ``None`` is
upstream Dream, schedule included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F

from engine.choices import ALGORITHMS, PARALLEL_ALGORITHMS


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
    threshold: float = 0.9
    """confidence_threshold: commit every masked slot whose probability is at least this
    (Fast-dLLM, Wu et al. 2025), and always the most confident one."""
    gamma: float = 0.01
    """eb: commit the most certain slots while their summed entropy, less the largest, stays
    within gamma nats (EB-sampler, Ben-Hamu et al. 2025); always at least one."""
    max_repeats: int = 0
    """> 0: never commit a token that would make a unit of 1-8 tokens appear more than this
    many times in a row right before it (greedy loops such as ``1, 1, 1, ...``); the slot takes
    its next best token. 0: off, as upstream Dream."""

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
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.gamma < 0:
            raise ConfigError(f"--gamma must be >= 0, got {self.gamma}")
        if self.max_repeats < 0:
            raise ConfigError(f"--max-repeats must be >= 0, got {self.max_repeats}")


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


def padding_inputs(attention_mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Dream's batch padding: a (B, L) 0/1 mask of real tokens (left padding) becomes the
    (B, 1, L, L) bool attention mask between real tokens and positions counted over real tokens
    only (pads get position 1), exactly as upstream ``_sample`` builds them; None when no row is
    padded (full attention, default positions)."""
    if attention_mask is None or not bool((attention_mask == 0).any()):
        return None, None
    tok_idx = attention_mask.long().cumsum(-1) - 1  # (B, L)
    tok_idx.masked_fill_(attention_mask == 0, 1)
    keep = attention_mask.bool()
    return keep[:, None, None, :] & keep[:, None, :, None], tok_idx  # (B, 1, L, L), (B, L)


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
    drawn = draw(probs, 1, gen) if s.temperature > 0 and probs.numel() else None
    if drawn is not None:
        x0 = drawn.squeeze(-1)  # (N,)
        conf = torch.gather(probs, -1, x0[:, None]).squeeze(-1)  # (N,)
    else:
        conf, x0 = probs.max(dim=-1)
    if confidence == "margin":
        top2 = torch.sort(probs, dim=-1, descending=True)[0]
        conf = top2[:, 0] - top2[:, 1]
    elif confidence == "neg_entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, x0


def draw(weights: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor | None:
    """``k`` multinomial draws per row of ``weights`` (N, V), or None when the weights are not a
    distribution (inf/nan from fp16 at a low temperature): upstream Dream then takes the argmax,
    and so do the callers."""
    w = weights.float()
    if not bool(torch.isfinite(w).all()) or bool((w.sum(-1) <= 0).any()):
        return None
    try:
        return torch.multinomial(w.to(_rng_device(gen, w)), k, generator=gen).to(weights.device)
    except RuntimeError:  # e.g. fewer non-zero weights than k
        return None


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
    return at(x, predicting_positions(mask_index), attention_mask, position_ids)


def predicting_positions(mask_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the hidden states whose logits predict the ``mask_index`` slots: the
    position before each (Dream's shift; position 0 predicts itself)."""
    rows, cols = mask_index.nonzero(as_tuple=True)
    return rows, (cols - 1).clamp(min=0)


LONGEST_UNIT = 8
"""The longest repeating unit (in tokens) ``ban_repeats`` looks for."""


def ban_repeats(x: torch.Tensor, mask_index: torch.Tensor, mlogits: torch.Tensor, n: int,
                mask_id: int) -> torch.Tensor:
    """``mlogits`` (M, V, rows in ``mask_index`` order) with every token banned that would
    complete the (n+1)-th consecutive copy of a unit of p <= LONGEST_UNIT tokens: the settled
    tokens just left of the slot are periodic with period p over p * (n + 1) - 1 positions, and
    the token p positions back would continue the period. Only slots whose left neighbours are
    settled can be judged (always the case left to right)."""
    rows, cols = mask_index.nonzero(as_tuple=True)
    grid = x.tolist()
    banned: list[tuple[int, int]] = []
    for m, (b, i) in enumerate(zip(rows.tolist(), cols.tolist())):
        row = grid[b]
        for p in range(1, LONGEST_UNIT + 1):
            lo = i - p * (n + 1) + 1
            if lo < 0 or mask_id in row[lo:i]:
                break  # a longer unit needs a longer settled window: no more to judge
            window = row[lo:i]
            if all(window[k] == window[k + p] for k in range(len(window) - p)):
                banned.append((m, row[i - p]))
    if not banned:
        return mlogits
    ban = torch.zeros(mlogits.shape, dtype=torch.bool, device=mlogits.device)
    idx = torch.tensor(banned, device=mlogits.device)
    ban[idx[:, 0], idx[:, 1]] = True
    return mlogits.masked_fill(ban, torch.finfo(mlogits.dtype).min)


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
    idx = draw(F.softmax(full_conf / s.alg_temp, dim=-1), k, gen) if s.alg_temp else None
    if idx is None:
        idx = torch.topk(full_conf, k).indices  # (B, k)
    cand = torch.full_like(x, mask_id)
    cand[mask_index] = x0
    rows = torch.arange(x.size(0), device=x.device)[:, None].expand_as(idx)
    x[rows, idx] = cand[rows, idx]


@dataclass
class Block:
    """One semi-autoregressive block: canvas columns [start, end) decoded in ``steps`` passes."""

    start: int
    end: int
    steps: int


def planned_steps(n_slots: int, steps: int, block_length: int | None) -> int:
    """The number of forward passes block decoding will make for ``steps`` asked for: at least
    one per block, at most one per slot (a pass that commits nothing is wasted). Dream's own
    order (no blocks) makes exactly ``steps``."""
    if not block_length or n_slots == 0:
        return steps
    return min(max(steps, math.ceil(n_slots / block_length)), n_slots)


def even_counts(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal counts, larger first (LLaDA's
    ``get_num_transfer_tokens``)."""
    base, extra = divmod(n, parts)
    return [base + (j < extra) for j in range(parts)]


def parallel_choice(probs: torch.Tensor, conf: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """Which of one row's masked slots to commit now (bool (N,)), for the parallel rules.

    probs: (N, V) token distributions; conf: (N,) probability of each slot's chosen token."""
    pick = torch.zeros(conf.shape, dtype=torch.bool, device=conf.device)
    if s.alg == "confidence_threshold":
        pick = conf >= s.threshold
    else:  # eb: ascending entropy, the longest prefix with sum - max <= gamma
        entropy = -(probs * torch.log(probs + 1e-10)).sum(-1)  # (N,)
        order = torch.argsort(entropy)
        sorted_h = entropy[order]
        bound = torch.cumsum(sorted_h, 0) - torch.cummax(sorted_h, 0).values  # (N,)
        pick[order[bound <= s.gamma]] = True
    pick[torch.argmax(conf)] = True  # progress: at least one slot per pass
    return pick


def parallel_step(x, mask_index, mlogits, s: SamplerSettings, gen) -> None:
    """Commit, in every row, the masked slots ``parallel_choice`` picks."""
    logits = mlogits / s.temperature if s.temperature > 0 else mlogits
    probs = torch.softmax(logits.float(), dim=-1)  # (M, V)
    conf, x0 = sample_tokens(mlogits, s, gen, "prob")  # (M,), (M,)
    rows = mask_index.nonzero(as_tuple=True)
    for b in range(x.size(0)):
        sel = rows[0] == b
        if not bool(sel.any()):
            continue
        pick = parallel_choice(probs[sel], conf[sel].float(), s)
        cols = rows[1][sel][pick]
        x[b, cols] = x0[sel][pick]


def block_plan(x: torch.Tensor, mask_id: int, steps: int,
               block_length: int | None) -> list[Block]:
    """Blocks over the masked span of ``x`` with the ``planned_steps`` shared out in proportion
    to each block's slots (largest remainders first), at least one and at most one per slot."""
    if not block_length:
        return [Block(0, x.size(1), steps)]
    cols = (x == mask_id).any(0).nonzero(as_tuple=True)[0]
    if cols.numel() == 0:
        return [Block(0, x.size(1), steps)]
    lo, hi = int(cols.min()), int(cols.max()) + 1
    starts = list(range(lo, hi, block_length))
    sizes = [min(a + block_length, hi) - a for a in starts]
    total = planned_steps(hi - lo, steps, block_length)
    spare, room = total - len(sizes), hi - lo - len(sizes)
    shares = [spare * (m - 1) / room if room else 0.0 for m in sizes]
    got = [1 + int(sh) for sh in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda j: int(shares[j]) - shares[j])
    for j in by_remainder[:total - sum(got)]:
        got[j] += 1
    return [Block(a, a + m, n) for a, m, n in zip(starts, sizes, got)]


def denoise(denoiser: Denoiser, x: torch.Tensor, mask_id: int, settings: SamplerSettings,
            generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None) -> Iterator[DenoiseStep]:
    """Denoise every ``mask_id`` slot of ``x`` (B, L), yielding after each forward pass.

    ``x`` is modified in place and also returned in each yielded step (cloned), so a caller that
    stops iterating (cancellation) simply stops the loop between two forward passes. Without
    blocks this makes ``settings.steps`` passes on Dream's schedule; with ``block_length`` it
    makes ``planned_steps`` passes, each committing at least one slot.
    """
    s = settings
    if s.alg in PARALLEL_ALGORITHMS:
        yield from _denoise_parallel(denoiser, x, mask_id, s, generator, attention_mask,
                                     position_ids)
        return
    plan = block_plan(x, mask_id, s.steps, s.block_length)
    total, i = sum(blk.steps for blk in plan), 0
    for blk in plan:
        timesteps = torch.linspace(1, s.eps, blk.steps + 1)
        counts = None
        for j in range(blk.steps):
            mask_index = x == mask_id  # (B, L)
            mask_index[:, :blk.start] = False
            mask_index[:, blk.end:] = False
            if s.block_length and counts is None:
                counts = even_counts(int(mask_index.sum(1).float().mean()), blk.steps)
            before = mask_index.clone()
            mlogits = masked_logits(denoiser, x, mask_index, attention_mask, position_ids)
            if s.max_repeats:
                mlogits = ban_repeats(x, mask_index, mlogits, s.max_repeats, mask_id)
            t, s_next = timesteps[j], timesteps[j + 1]
            last = j == blk.steps - 1
            if s.alg == "origin":
                p_transfer = 1 if last else 1 - s_next / t
                origin_step(x, mask_index, mlogits, p_transfer, s, mask_id, generator)
            else:
                k = counts[j] if counts is not None else \
                    num_transfer_tokens(mask_index.cpu(), t, s_next, last)
                confidence_step(x, mask_index, mlogits, k, s, mask_id, generator)
            yield DenoiseStep(i, total, x.clone(), before & (x != mask_id))
            i += 1


def _denoise_parallel(denoiser, x, mask_id, s: SamplerSettings, generator, attention_mask,
                      position_ids) -> Iterator[DenoiseStep]:
    """Blocks left to right; in each, passes until no slot is masked, each committing what
    ``parallel_choice`` deems safe (at least one). ``steps`` in the yielded state is the most
    passes this can take (one per slot); the real count is known when the loop ends."""
    plan = block_plan(x, mask_id, int((x == mask_id).sum(1).max()), s.block_length)
    most, i = int((x == mask_id).sum(1).max()), 0
    for blk in plan:
        while True:
            mask_index = x == mask_id  # (B, L)
            mask_index[:, :blk.start] = False
            mask_index[:, blk.end:] = False
            if not bool(mask_index.any()):
                break
            before = mask_index.clone()
            mlogits = masked_logits(denoiser, x, mask_index, attention_mask, position_ids)
            if s.max_repeats:
                mlogits = ban_repeats(x, mask_index, mlogits, s.max_repeats, mask_id)
            parallel_step(x, mask_index, mlogits, s, generator)
            yield DenoiseStep(i, most, x.clone(), before & (x != mask_id))
            i += 1
