"""The model read as its autoregressive parent: greedy left-to-right decoding, causal mask.

A Dream model keeps next-token alignment (hidden state i predicts token i+1), so with a causal
attention mask an adapted model's *base* is exactly the pretrained AR model it came from
(``engine.gguf_base``). This is the baseline the diffusion model has to beat on the same tasks:
it reads only the prefix, healed (the prompt ends before the prefix's trailing newline and
indentation, the continuation's copy of them is dropped: ``engine.healing``). Keys and values
of past positions are kept in the ``LayerKV`` cache: the prompt fills it in one causal pass,
then each new token is a one-position window appended at the end.
"""

from __future__ import annotations

import torch

from engine.model import LayerKV


def prompt_cache(model, ids: torch.Tensor) -> tuple[list[LayerKV], torch.Tensor]:
    """One causal pass over ``ids`` (B, n): per-layer keys and values, and the next-token
    logits after the last position (B, V)."""
    cache = [LayerKV(None) for _ in model.model.layers]
    return cache, model(ids, causal=True, cache=cache)[:, -1]


def branch_cache(cache: list[LayerKV], rows: int) -> list[LayerKV]:
    """A copy of a one-row ``cache`` for ``rows`` continuations: each appends its own
    positions; the shared prompt keys are read, never written."""
    out = []
    for layer in cache:
        copy = LayerKV(None)
        copy.k, copy.v = layer.k.expand(rows, -1, -1, -1), layer.v.expand(rows, -1, -1, -1)
        out.append(copy)
    return out


def append(model, cache: list[LayerKV], ids: torch.Tensor, n: int) -> torch.Tensor:
    """Logits (B, L, V) of ``ids`` (B, L) written after the ``n`` cached positions, each
    attending to the cache and causally within ``ids``."""
    L = ids.shape[1]
    for layer in cache:
        layer.window = (n, n + L)
    mask = None
    if L > 1:  # one position attends to every key already; more need the causal triangle
        keys = torch.arange(n + L, device=ids.device)
        mask = keys[None, :] <= n + torch.arange(L, device=ids.device)[:, None]  # (L, n+L)
        mask = mask[None, None].expand(ids.shape[0], 1, L, n + L)
    return model(ids, attention_mask=mask, cache=cache)


def without_mask(model, logits: torch.Tensor) -> torch.Tensor:
    """fp32 ``logits`` with the diffusion mask id impossible (the parent never writes it); a
    new tensor, so a shared prompt's logits stay as they are."""
    return logits.float().index_fill(-1, torch.tensor([model.config.mask_token_id],
                                                      device=logits.device), float("-inf"))


@torch.inference_mode()
def greedy_steps(model, ids: torch.Tensor):
    """Greedy next tokens after each row of ``ids`` (B, n), all rows of one length (no
    padding): yields (B,) per step, forever; the caller stops. The prompt fills the ``LayerKV``
    caches in one causal pass, then each step appends one position per row."""
    cache, logits = prompt_cache(model, ids)
    n = ids.shape[1]
    while True:
        nxt = without_mask(model, logits).argmax(-1)  # (B,)
        yield nxt
        logits = append(model, cache, nxt[:, None], n)[:, -1]
        n += 1


def greedy_continue(model, ids: list[int], max_new: int, end_ids: set[int],
                    stop: tuple[str, ...] = (), decode=None) -> list[int]:
    """Up to ``max_new`` greedy tokens after ``ids`` (stops at an end id or a stop string)."""
    dev = next(model.parameters()).device
    out: list[int] = []
    steps = greedy_steps(model, torch.tensor([ids], device=dev))
    for _, token in zip(range(max_new), steps):
        nxt = int(token[0])
        if nxt in end_ids:
            break
        out.append(nxt)
        if stop and decode is not None and any(s in decode(out) for s in stop):
            break
    return out
