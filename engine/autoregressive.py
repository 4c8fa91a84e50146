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

import time

import torch

from engine.healing import plan_healing
from engine.model import LayerKV


@torch.inference_mode()
def greedy_steps(model, ids: torch.Tensor):
    """Greedy next tokens after each row of ``ids`` (B, n), all rows of one length (no
    padding): yields (B,) per step, forever; the caller stops. The prompt fills the ``LayerKV``
    caches in one causal pass, then each step appends one position per row."""
    cache = [LayerKV(None) for _ in model.model.layers]
    logits = model(ids, causal=True, cache=cache)[:, -1]  # (B, V)
    mask_id = model.config.mask_token_id  # the parent never writes the diffusion mask
    n = ids.shape[1]
    while True:
        logits = logits.float()
        logits[:, mask_id] = float("-inf")
        nxt = logits.argmax(-1)  # (B,)
        yield nxt
        for layer in cache:
            layer.window = (n, n + 1)  # append one position; it attends to every cached key
        logits = model(nxt[:, None], cache=cache)[:, -1]
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


def ar_completion(engine, prefix: str, max_new: int, stop: tuple[str, ...] = ()):
    """The parent's continuation of ``prefix`` as an ``engine.api.Completion`` (the suffix is
    not read: that is the baseline's handicap)."""
    from engine.api import Completion

    start = time.perf_counter()
    heal = plan_healing(engine.tokenizer, prefix, "")  # what infill_prompt cuts from the prefix
    ids = engine.infill_prompt(prefix, "", max_new)[0]
    model = engine.denoiser.loaded.model
    ends = engine.end_ids | ({engine.im_end_id} - {None})
    tok = engine.tokenizer
    # a stop string counts only after the healed cut (the continuation starts with a newline)
    out = greedy_continue(model, ids, max_new, ends, stop,
                          lambda o: heal.completion(tok.decode(o), final=False))
    text = heal.completion(tok.decode(out), final=False)
    return Completion(text, out, list(range(len(out))), len(out), max_new,
                      time.perf_counter() - start, len(ids), {"forward_passes": len(out) + 1})
