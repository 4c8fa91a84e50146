"""Keys and values kept from one request to the next (the torch back end's context reuse).

While a developer types, consecutive editor requests share almost all of their prefix: the file
above the cursor. ``ContextReuse`` keeps every layer's keys and values of the last full forward
pass; the next full pass whose tokens start with the same ``MIN_SHARED`` or more tokens (at the
same positions) computes only the positions from the first difference on and attends to the kept
keys for the shared part (less its last ``RECOMPUTED`` tokens), as llama.cpp's server reuses its
KV cache for llama.vim. With bidirectional attention this is an approximation of the same kind
as Fast-dLLM's dual cache (``engine.api.CachedDenoiser``): the kept keys were computed next to
the previous request's text after them. ``benchmarks/context_reuse.py`` measures its speed and
how often outputs change.
"""

from __future__ import annotations

import threading

import torch

from engine.model import LayerKV

MIN_SHARED = 32
"""Fewer shared tokens than this are recomputed: the saving would not pay for the bookkeeping."""
RECOMPUTED = 32
"""The last shared tokens before the first difference are computed again: their keys are the
ones the edit changed most (on retyped lines of this repository, 32 kept 94 % of single-line
completions identical to no reuse where reusing everything kept 71 %;
benchmarks/context_reuse.py)."""


def shared_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common start of ``a`` and ``b``, at most ``limit``."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ContextReuse:
    """The last full pass's keys and values, shared by the requests of one engine (one lock)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self._lock = threading.Lock()
        self._ids: list[int] = []
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def full_pass(self, x: torch.Tensor, select: tuple[torch.Tensor, torch.Tensor],
                  limit: int) -> tuple[torch.Tensor, list[LayerKV], int]:
        """Logits at ``select`` for the single row ``x`` (1, L) as a full pass would give them,
        reusing the kept keys for up to ``limit`` leading positions (0: none). Returns the logits,
        this pass's per-layer keys (kept for the next call) and the number of positions reused."""
        ids = x[0].tolist()
        with self._lock:
            old_ids, old_kv = self._ids, self._kv
        shared = shared_prefix(old_ids, ids, limit) - RECOMPUTED
        if shared < MIN_SHARED:
            shared = 0
        cache = [LayerKV(None) for _ in self.model.model.layers]
        rows, cols = select[0].to(self.device), select[1].to(self.device)
        with torch.inference_mode():
            if shared:
                for layer, (k, v) in zip(cache, old_kv):
                    layer.k, layer.v = k[:, :, :shared], v[:, :, :shared]
                    layer.window = (shared, len(ids))
                out = self.model(x[:, shared:].to(self.device), select=(rows, cols - shared),
                                 cache=cache)
            else:
                out = self.model(x.to(self.device), select=(rows, cols), cache=cache)
        with self._lock:
            self._ids, self._kv = ids, [(layer.k, layer.v) for layer in cache]
        return out, cache, shared
