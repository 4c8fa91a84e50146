"""AR-ness of a decoding order (DiffuCoder, Gong et al. 2025, section 4.1 and appendix A.2).

``order[i]`` is the step at which canvas slot i was decoded. Steps are processed in time; when a
step decodes several slots (fewer steps than slots) they are taken left to right within the step,
which reduces to the paper's one-token-per-step setting when steps == slots.

- Local AR-ness@k (NTP@k): share of decoded tokens whose k previously decoded tokens are exactly
  the k slots immediately to its left (a consecutive increasing run ending at it). Tokens with
  fewer than k predecessors count as 0, as do runs reaching into the prompt.
- Global AR-ness@k (FMS@k): share of decoded tokens that were among the k left-most slots still
  masked when they were decoded.
An autoregressive model scores 1 on both.
"""

from __future__ import annotations


def decoding_sequence(order: list[int]) -> list[int]:
    """Slot indices in the order they were decoded (ties broken left to right)."""
    decoded = [(step, slot) for slot, step in enumerate(order) if step >= 0]
    return [slot for _, slot in sorted(decoded)]


def local_ar_ness(order: list[int], k: int = 1) -> float:
    seq = decoding_sequence(order)
    if not seq:
        return 0.0
    hits = 0
    for t, p in enumerate(seq):
        if t >= k and seq[t - k:t] == list(range(p - k, p)):
            hits += 1
    return hits / len(seq)


def global_ar_ness(order: list[int], k: int = 1) -> float:
    seq = decoding_sequence(order)
    if not seq:
        return 0.0
    masked = sorted(seq)
    hits = 0
    for p in seq:
        if p in masked[:k]:
            hits += 1
        masked.remove(p)
    return hits / len(seq)


def ar_ness_report(order: list[int], local_k=(1, 2, 4), global_k=(1, 2, 4)) -> dict:
    out = {f"local@{k}": round(local_ar_ness(order, k), 4) for k in local_k}
    out.update({f"global@{k}": round(global_ar_ness(order, k), 4) for k in global_k})
    return out
