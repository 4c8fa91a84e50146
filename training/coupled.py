"""Coupled-GRPO's per-token log-likelihood estimate and its clipped, KL-regularised loss.

A masked diffusion model has no exact per-token log-probability. DiffuCoder (Gong et al. 2025,
eq. 13, and ``src/open_r1/coupled_grpo.py`` of apple/ml-diffucoder) scores each completion token
with three views of the sequence, the prompt never masked:
  v0: every completion token masked (d1's one-step estimate);
  v1: completion tokens masked with probability t, t ~ U(0.2, 0.8) (one t per mask seed);
  v2: exactly the complement of v1's masked set (ratio 1 - t).
Each completion token is masked in exactly one of v1 and v2, so its score is
``(lp0 + (lp1 / t if masked in v1 else lp2 / (1 - t))) / 2``: the antithetic pair lowers the
variance of the estimate (``benchmarks/grpo_variance.py`` measures by how much). The loss is
PPO's clipped objective on the ratio of these scores to the rollout policy's, plus beta times
the k3 estimate of the KL to the reference model, averaged over completion tokens.
"""

from __future__ import annotations

import random

import torch


def mask_ratio(seed: int, low: float = 0.2, high: float = 0.8) -> float:
    """The mask ratio t of one mask seed (shared by every sequence scored with that seed)."""
    return random.Random(seed).uniform(low, high)


def mask_uniforms(seed: int, uids: list[int], length: int) -> torch.Tensor:
    """(B, L) uniforms deciding which tokens v1 masks: row b depends only on (seed, uids[b]),
    so a rollout gets the same masks whichever process or batch scores it."""
    rows = [torch.rand(length, generator=torch.Generator().manual_seed(seed * 1_000_003 + uid))
            for uid in uids]
    return torch.stack(rows)


def coupled_masks(completion: torch.Tensor, t: float, uniforms: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(m1, m2): completion tokens masked in v1 (uniform < t) and in v2 (all the others)."""
    m1 = completion & (uniforms < t)
    return m1, completion & ~m1


def view_logps(model, views: torch.Tensor, ids: torch.Tensor, completion: torch.Tensor
               ) -> torch.Tensor:
    """(K, M) log p(token) at the M completion positions of each of K stacked views of ``ids``
    (views: (K*B, L)); the hidden state at i-1 predicts token i, as Dream does."""
    B = ids.shape[0]
    K = views.shape[0] // B
    rows, cols = completion.nonzero(as_tuple=True)  # (M,), (M,)
    sel_rows = torch.cat([rows + k * B for k in range(K)])
    sel_cols = (cols - 1).repeat(K)
    logits = model(views, select=(sel_rows, sel_cols)).float()  # (K*M, V)
    targets = ids[rows, cols].repeat(K)  # (K*M,)
    lp = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    return lp.view(K, -1)


def coupled_scores(model, ids: torch.Tensor, completion: torch.Tensor, t: float,
                   uniforms: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Per-token coupled estimate (B, L), zero outside ``completion``; ids (B, L), completion
    (B, L) bool (never position 0), uniforms (B, L). One forward over the 3 views."""
    m1, m2 = coupled_masks(completion, t, uniforms)
    mask = torch.full_like(ids, mask_id)
    views = torch.cat([torch.where(completion, mask, ids), torch.where(m1, mask, ids),
                       torch.where(m2, mask, ids)])  # (3B, L)
    lp = view_logps(model, views, ids, completion)  # (3, M)
    rows, cols = completion.nonzero(as_tuple=True)
    partial = torch.where(m1[rows, cols], lp[1] / t, lp[2] / (1 - t))
    out = torch.zeros(ids.shape, dtype=lp.dtype, device=lp.device)
    out[rows, cols] = (lp[0] + partial) / 2
    return out


def grpo_loss(scores: torch.Tensor, old: torch.Tensor, ref: torch.Tensor,
              advantages: torch.Tensor, weight: torch.Tensor, epsilon: float, beta: float,
              denominator: float) -> tuple[torch.Tensor, dict]:
    """Clipped policy loss + beta * k3 KL, summed over the tokens with ``weight`` 1 and divided
    by ``denominator`` (the number of such tokens in the whole update, over every process,
    divided by the process count: data parallel then averages to the single-process loss).

    scores, old, ref, weight: (B, L); advantages: (B,). Returns (loss, sums for the log)."""
    adv = advantages[:, None]
    ratio = torch.exp(scores - old)
    objective = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    kl = torch.exp(ref - scores) - (ref - scores) - 1
    per_token = (-objective + beta * kl) * weight
    low = (ratio < 1 - epsilon) & (adv < 0)
    high = (ratio > 1 + epsilon) & (adv > 0)
    stats = {"kl_sum": float((kl.detach() * weight).sum()),
             "clipped": float(((low | high) * weight).sum()), "tokens": float(weight.sum())}
    return per_token.sum() / denominator, stats


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """Advantages within a group: each reward minus the mean of the others (G >= 2)."""
    G = rewards.numel()
    return rewards - (rewards.sum() - rewards) / (G - 1)


def masked_only_scores(model, ids: torch.Tensor, completion: torch.Tensor, t: float,
                       uniforms: torch.Tensor, mask_id: int) -> torch.Tensor:
    """One random mask at ratio t: lp / t where masked, 0 elsewhere (the unbiased single-mask
    estimate the coupled pair is compared with). (B, L)."""
    m1 = completion & (uniforms < t)
    views = torch.where(m1, torch.full_like(ids, mask_id), ids)
    lp = view_logps(model, views, ids, completion)[0]
    rows, cols = completion.nonzero(as_tuple=True)
    out = torch.zeros(ids.shape, dtype=lp.dtype, device=lp.device)
    out[rows, cols] = torch.where(m1[rows, cols], lp / t, torch.zeros_like(lp))
    return out


def full_mask_scores(model, ids: torch.Tensor, completion: torch.Tensor, mask_id: int,
                     prompt_mask: float, gen: torch.Generator) -> torch.Tensor:
    """d1's estimate (Zhao et al. 2025): the completion fully masked, prompt tokens masked with
    probability ``prompt_mask`` (its only randomness); one pass. (B, L)."""
    prompt = ~completion
    prompt[:, 0] = False
    hidden = prompt & (torch.rand(ids.shape, generator=gen) < prompt_mask)
    views = torch.where(completion | hidden, torch.full_like(ids, mask_id), ids)
    lp = view_logps(model, views, ids, completion)[0]
    rows, cols = completion.nonzero(as_tuple=True)
    out = torch.zeros(ids.shape, dtype=lp.dtype, device=lp.device)
    out[rows, cols] = lp
    return out

