"""The parent's own continuations as infilling targets (sequence-level distillation).

Stages 5 to 7 of issue 22 showed that more of the corpus buys held-out loss and not the lines
an editor asks for, while the AR parent, reading only the prefix, writes more right lines than
the adapted model reading both sides. The KL to the parent (``objectives.Parent``) matches its
next-token distribution on *our* text; this matches what it *writes*: sequence-level knowledge
distillation (Kim and Rush 2016), where a student trained on the teacher's greedy outputs
learns the teacher's modes rather than the data's spread, which a small student fits more easily.

A record is a corpus context that stops just before the newline of an indented line (a line of
a body, the shape of most editor requests and of the healed prompt the parent reads best),
followed by the frozen parent's greedy continuation of it, cut to whole lines. A training
window is the record's context tail plus the continuation, and its holes lie only in the
continuation, so the middle the model fills and the lines after it (its suffix) are both the
parent's own, consistent text.

Records are written in parts (``part-00000.npz``, atomically), each a function of (seed, part),
so a build stopped at any point resumes where it stopped and loses nothing; ``load`` reads
every part with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import ConfigError
from engine.autoregressive import greedy_steps
from training.objectives import newline_tokens

MIN_LINES = 2
"""Continuations need a line after the first, so a hole in them has a suffix."""
FRUITLESS_PARTS = 4
"""Parts in a row without one kept record before the build gives up (a base that cannot write
a line would otherwise loop forever)."""
MAX_REPEATS = 2
"""A continuation that writes the same non-blank line more often is a loop: dropped."""


@dataclass
class Records:
    """Every record: ``context`` (N, context_len) corpus ids; ``continuation`` ids flat, row i
    at ``offsets[i]:offsets[i + 1]``."""

    context: np.ndarray
    continuation: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.context)

    def window(self, i: int, seq_len: int) -> tuple[torch.Tensor, int]:
        """Record ``i`` as a ``seq_len`` window: (ids (L,), index of the continuation's first
        token). The context is cut from the left to make room."""
        cont = self.continuation[self.offsets[i]:self.offsets[i + 1]]
        keep = seq_len - len(cont)
        ids = np.concatenate([self.context[i, -keep:], cont]).astype(np.int64)
        return torch.from_numpy(ids), keep


def indented_newlines(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool per id: the token holds a newline and ends with indentation after it (it begins an
    indented line: GPT-2-style BPE merges ``"\\n    "`` into one token)."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        text = tokenizer.decode([i])
        tail = text.rsplit("\n", 1)[-1] if "\n" in text else ""
        table[i] = bool(tail) and not tail.strip(" \t")
    return table


def pick_cuts(data: np.ndarray, count: int, context_len: int, max_new: int,
              starts_line: torch.Tensor, gen: torch.Generator) -> list[int]:
    """``count`` offsets c of tokens that begin an indented line, each with ``context_len``
    tokens before it: the context is ``data[c - context_len:c]``, and the parent writes the
    line from its newline on (the healed cut: a prompt that ends after the newline and
    indentation reads far worse, ``engine.healing``)."""
    table = starts_line.numpy()
    cuts: list[int] = []
    for _ in range(100 * count):
        if len(cuts) == count:
            return cuts
        at = int(torch.randint(context_len, len(data) - max_new - 256, (1,), generator=gen))
        ahead = np.flatnonzero(table[np.asarray(data[at:at + 256], dtype=np.int64)])
        if len(ahead):
            cuts.append(at + int(ahead[0]))
    raise ConfigError("the training data holds too few indented lines to cut contexts at")


def greedy_rows(model, ids: torch.Tensor, max_new: int) -> torch.Tensor:
    """``max_new`` greedy tokens after each row of ``ids`` (B, n), all rows of one length
    (``engine.autoregressive.greedy_steps``). Returns (B, max_new); rows are not stopped at an
    end token (the caller cuts them)."""
    steps = greedy_steps(model, ids)
    return torch.stack([next(steps) for _ in range(max_new)], 1)


def whole_lines(gen: list[int], has_newline: torch.Tensor, end_ids: set[int],
                decode) -> list[int] | None:
    """The continuation cut before its first end token and then before its last newline token
    (the last line kept is whole); None unless it starts a line, holds ``MIN_LINES`` lines and
    does not loop."""
    for k, t in enumerate(gen):
        if t in end_ids:
            gen = gen[:k]
            break
    marks = [k for k, t in enumerate(gen) if has_newline[t]]
    if not marks or marks[0] != 0 or len(marks) <= MIN_LINES:
        return None
    kept = gen[:marks[-1]]
    lines = [ln.strip() for ln in decode(kept).splitlines() if ln.strip()]
    if len(lines) < MIN_LINES or max(lines.count(ln) for ln in lines) > MAX_REPEATS:
        return None
    return kept


def build(model, tokenizer, data: np.ndarray, out: Path, count: int, context_len: int,
          prompt_len: int, max_new: int, batch: int, seed: int, end_ids: set[int],
          reject=None, progress=None) -> int:
    """Write records into ``out`` until ``count`` are there (parts of ``batch`` prompts);
    returns how many there are. ``reject(text)``: a reason to drop a record (decontamination),
    or None. ``progress(have, count)`` after each part."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = model.config.vocab_size
    starts_line = indented_newlines(tokenizer, vocab)
    has_newline = newline_tokens(tokenizer, vocab)
    have = sum(len(np.load(p)["offsets"]) - 1 for p in sorted(out.glob("part-*.npz")))
    part = len(list(out.glob("part-*.npz")))
    fruitless = 0
    while have < count:
        if fruitless == FRUITLESS_PARTS:
            raise ConfigError(f"the parent wrote no usable continuation in {fruitless * batch} "
                              "prompts (none began a line and held whole lines without "
                              "looping): check the base and the data")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + part)
        cuts = pick_cuts(data, batch, context_len, max_new, starts_line, gen)
        ctx = np.stack([np.asarray(data[c - context_len:c], dtype=np.int64) for c in cuts])
        rows = greedy_rows(model, torch.from_numpy(ctx[:, -prompt_len:]), max_new).tolist()
        keep_ctx, conts = [], []
        for c_row, g in zip(ctx, rows):
            cont = whole_lines(g, has_newline, end_ids, tokenizer.decode)
            if cont is None or (reject and reject(tokenizer.decode(c_row[-prompt_len:].tolist()
                                                                   + cont))):
                continue
            keep_ctx.append(c_row)
            conts.append(cont)
        offsets = np.cumsum([0] + [len(c) for c in conts])
        tmp = out / f".part-{part:05d}.tmp.npz"
        np.savez(tmp, context=np.asarray(keep_ctx, dtype=np.uint16).reshape(-1, context_len),
                 continuation=np.asarray([t for c in conts for t in c], dtype=np.uint16),
                 offsets=offsets.astype(np.int64))
        os.replace(tmp, out / f"part-{part:05d}.npz")
        have += len(conts)
        part += 1
        fruitless = 0 if conts else fruitless + 1
        if progress:
            progress(have, count)
    return have


def load(folder: Path) -> Records:
    """Every part of a built folder as one ``Records``."""
    parts = [np.load(p, allow_pickle=False) for p in sorted(folder.glob("part-*.npz"))]
    if not parts:
        raise FileNotFoundError(f"no parent-line records in {folder}")
    conts = [p["continuation"] for p in parts]
    offsets, base = [np.zeros(1, dtype=np.int64)], 0
    for p in parts:
        offsets.append(p["offsets"][1:] + base)
        base += int(p["offsets"][-1])
    return Records(np.concatenate([p["context"] for p in parts]),
                   np.concatenate(conts), np.concatenate(offsets))


def mix_into(x: torch.Tensor, records: Records, share: float, gen: torch.Generator
             ) -> tuple[torch.Tensor, list[int]]:
    """Each row of the batch ``x`` (B, L) becomes a random record's window with probability
    ``share``; returns (batch, per row the index its holes start at, 0 for corpus rows)."""
    B, L = x.shape
    pick = (torch.rand(B, generator=gen) < share).tolist()
    which = torch.randint(len(records), (B,), generator=gen).tolist()
    x, lo = x.clone(), [0] * B
    for b in range(B):
        if pick[b]:
            x[b], lo[b] = records.window(which[b], L)
    return x, lo
