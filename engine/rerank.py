"""Infill answers picked by the parent's likelihood of the whole file.

An autoregressive LM scores any filled-in file exactly, and for a hole
p(middle | prefix, suffix) is proportional to p(middle | prefix) * p(suffix | prefix, middle):
of several candidate answers, the one under which the prefix, the answer and the code after it
are likeliest is the posterior's choice among them. The adapted model's parent (its pretrained
base, ``engine.gguf_base``, read with a causal mask) is such an LM, already on disk. It writes
better lines than the diffusion model but cannot read the suffix (the model card: 0.301 against
0.222 on HumanEval single-line); the diffusion model reads the suffix. So the candidates are
the diffusion model's answer and ``branches`` continuations of the parent (greedy, except that
the first token holding more than whitespace is each of its ``branches`` likeliest), and the
parent scores each as the log-probability of the text from the prompt's cut through the
answer and the next ``suffix_lines`` lines of the suffix, in one batched causal pass over the
cached prompt. Reranking candidates by a full-context score is how Fried et al. (InCoder, 2022)
and Bavarian et al. (2022, FIM) rank infills; here the proposer that reads the suffix is the
diffusion model.

A single-line request compares first lines. A block compares lengths too: every run of the
first k lines of each answer is a candidate (the parent writes one line more than the
diffusion answer holds), so the suffix's likelihood decides where the block ends, which is
where a diffusion canvas most often goes wrong (a stray line or function after the right ones).
A block before a blank suffix (a whole function, or the end of a file) has no code after it
to judge its length: scored by the sum of log-probabilities against the file's end token,
whole functions came out one line long (docs/adaptation.md). So there each answer is whole,
ended where it leaves the hole's indentation scope (``engine.scope``: the parent writes until
its function ends), and the judge is the mean log-probability per token, which does not favour
the shortest answer (Chen et al. 2021, Codex: ranking samples by mean log-probability beats
picking at random).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.autoregressive import append, branch_cache, prompt_cache, without_mask
from engine.healing import Healing
from engine.scope import limit_scope
from engine.syntax_guard import first_line


@dataclass(frozen=True)
class Candidate:
    text: str
    """The answer as inserted at the cursor, without the separator before the suffix: one line
    (a single-line request) or whole lines (a block), no final newline."""
    source: str
    """``diffusion`` or ``parent``."""
    logprob: float
    """The parent's log-probability of the file text from the prompt's cut to the suffix
    lines scored, given the prompt (a function: per token)."""


def first_lines(text: str, k: int) -> str:
    """``text`` before its ``k``-th newline (all of it when it has fewer)."""
    return "\n".join(text.split("\n")[:k])


def suffix_head(suffix: str, lines: int) -> str:
    """The suffix through its ``lines``-th newline (all of it when shorter)."""
    if suffix.count("\n") < lines:
        return suffix
    return first_lines(suffix, lines) + "\n" if lines else ""


def line_runs(text: str) -> list[str]:
    """Each run of ``text``'s first k lines that ends on a line holding code, shortest first:
    a block's candidate lengths."""
    lines = text.split("\n")
    return ["\n".join(lines[:k]) for k in range(1, len(lines) + 1) if lines[k - 1].strip()]


def line_end(lines: int) -> Callable[[str], str | None]:
    """A written answer's end for a line or block: its first ``lines`` lines once it holds
    them, None before."""
    return lambda text: first_lines(text, lines) if text.count("\n") >= lines else None


def scope_end(prefix: str) -> Callable[[str], str | None]:
    """A written answer's end for a function: its lines inside the hole's indentation scope
    once a line has left it (``engine.scope``: the body ends at a line back at the ``def``'s
    level), None before."""
    def end(text: str) -> str | None:
        kept = limit_scope(text, prefix, "")
        return kept if len(kept) < len(text) else None
    return end


def line_separator(prefix: str, suffix: str) -> str:
    """What goes between an answer and the suffix in the file: a newline when the hole is
    whole lines (the prefix ends at a line's start, the suffix starts the next one), nothing
    when the answer completes the cursor's own line."""
    at_line_start = prefix == "" or "\n" in prefix[len(prefix.rstrip()):]
    return "\n" if at_line_start and suffix and not suffix.startswith("\n") else ""


@torch.inference_mode()
def parent_texts(model, tokenizer, cache, logits: torch.Tensor, n: int, heal: Healing,
                 branches: int, max_new: int, end_ids: set[int],
                 end: Callable[[str], str | None] = line_end(1)) -> list[str]:
    """Up to ``branches`` distinct answers the parent writes after a prompt of ``n`` cached
    positions (``logits``: its next-token logits, (1, V)): greedy through the leading
    whitespace (the healed newline and indentation), then one answer per each of the
    ``branches`` likeliest first tokens that hold more than whitespace, each continued greedily
    until ``end`` says it is complete (``line_end``, ``scope_end``), or ``max_new`` tokens,
    or an end token."""
    dev = logits.device
    lead: list[int] = []
    logits = without_mask(model, logits)
    while True:  # the whitespace before the line; one row, the cache is only read
        token = int(logits[0].argmax())
        if token in end_ids or len(lead) >= max_new - 1:
            return []
        if tokenizer.decode([token]).strip():
            break
        lead.append(token)
        cache = branch_cache(cache, 1) if len(lead) == 1 else cache
        step = append(model, cache, torch.tensor([[token]], device=dev), n)
        logits, n = without_mask(model, step[:, -1]), n + 1
    firsts = [t for t in logits[0].topk(branches + len(end_ids)).indices.tolist()
              if t not in end_ids and tokenizer.decode([t]).strip()][:branches]
    rows = [lead + [t] for t in firsts]
    rows_cache = branch_cache(cache, len(rows))

    def text(row: list[int]) -> str:
        return heal.completion(tokenizer.decode(row), final=False)

    done = [end(text(r)) is not None for r in rows]
    cur = torch.tensor([[t] for t in firsts], device=dev)  # (B, 1)
    for _ in range(max_new - len(lead) - 1):  # each row holds lead + 1 so far
        if all(done):
            break
        logits = without_mask(model, append(model, rows_cache, cur, n)[:, -1])  # (B, V)
        n += 1
        cur = logits.argmax(-1, keepdim=True)  # (B, 1)
        for i, token in enumerate(cur[:, 0].tolist()):
            if done[i]:
                continue
            if token in end_ids:
                done[i] = True
            else:
                rows[i].append(token)
                done[i] = end(text(rows[i])) is not None
    answers = [(kept if (kept := end(text(r))) is not None else text(r)).rstrip("\n")
               for r in rows]
    return list(dict.fromkeys(a for a in answers if a.strip()))


@torch.inference_mode()
def continuation_logprobs(model, cache, logits: torch.Tensor, n: int,
                          continuations: list[list[int]]) -> list[float]:
    """log p(continuation | prompt) of each token list, the prompt being the ``n`` cached
    positions whose next-token logits are ``logits`` (1, V); one batched pass."""
    dev = logits.device
    width = max(len(c) for c in continuations)
    ids = torch.tensor([c + [c[-1]] * (width - len(c)) for c in continuations],
                       device=dev)  # (B, W), right-padded: causal, so padding changes nothing
    lengths = torch.tensor([len(c) for c in continuations], device=dev)
    out = append(model, branch_cache(cache, len(continuations)), ids[:, :-1], n) \
        if width > 1 else logits.new_zeros(len(continuations), 0, logits.shape[-1])
    scores = torch.cat([logits.expand(len(continuations), -1)[:, None], out], 1)  # (B, W, V)
    logp = F.log_softmax(without_mask(model, scores), -1).gather(-1, ids[..., None])[..., 0]
    keep = torch.arange(width, device=dev)[None, :] < lengths[:, None]  # (B, W)
    return (logp * keep).sum(-1).tolist()  # (B,)


def candidate_texts(answer: str, parents: list[str], kind: str,
                    prefix: str = "") -> dict[str, str]:
    """text -> source: the diffusion ``answer``'s, then the parent's. A line is each answer's
    first line; a block is every ``line_runs`` length of each; a function is each answer whole,
    the diffusion answer cut where it leaves the scope of the hole after ``prefix``."""
    def runs(text: str) -> list[str]:
        if kind == "line":
            return [first_line(text)]
        if kind == "block":
            return line_runs(text)
        return [text.rstrip("\n")] if text.strip() else []

    out: dict[str, str] = {}
    whole = limit_scope(answer, prefix, "") if kind == "function" else answer
    for source, texts in (("diffusion", [whole]), ("parent", parents)):
        for text in texts:
            for run in runs(text):
                out.setdefault(run, source)
    return out


def score_texts(model, tokenizer, cache, logits: torch.Tensor, n: int, texts: dict[str, str],
                prefix: str, suffix: str, heal: Healing, suffix_lines: int,
                end_ids: set[int], per_token: bool = False) -> list[Candidate]:
    """``texts`` scored by the parent with ``suffix_lines`` lines of the suffix, best first
    (the earlier candidate first among equals); ``per_token``: the mean log-probability."""
    tail = line_separator(prefix, suffix) + suffix_head(suffix, suffix_lines)
    conts = [tokenizer.encode(heal.cut + text + tail) or [min(end_ids)] for text in texts]
    scores = continuation_logprobs(model, cache, logits, n, conts)
    if per_token:
        scores = [score / len(cont) for score, cont in zip(scores, conts)]
    ranked = [Candidate(text, source, score)
              for (text, source), score in zip(texts.items(), scores)]
    return sorted(ranked, key=lambda c: -c.logprob)


def request_kind(single: bool, suffix: str) -> str:
    """What a request asks for: a single-line request is a line; lines before code are a
    block (judged with the code after them), before a blank suffix a function (judged per
    token)."""
    return "line" if single else "block" if suffix.strip() else "function"


def rerank(model, tokenizer, prompt: list[int], prefix: str, suffix: str, heal: Healing,
           answer: str, branches: int, suffix_lines: int, max_new: int, end_ids: set[int],
           kind: str = "line", whole_bodies: bool = False) -> list[Candidate]:
    """The diffusion ``answer`` and the parent's ``branches`` answers, scored, best first:
    first lines, every length of each (a block), or each whole, per token (a function; the
    file's text after it is the newline that ends its last line). ``prompt``: the healed
    prefix's token ids as the parent reads them (``Engine.infill_prompt(prefix, "", ...)``).
    The parent writes a block one line longer than ``answer``, or, with ``whole_bodies`` (a
    body that will be run on its examples, which only a whole body can pass), until it leaves
    the body's scope, as a function's."""
    dev = next(model.parameters()).device
    cache, logits = prompt_cache(model, torch.tensor([prompt], device=dev))
    end = scope_end(prefix) if kind == "function" or whole_bodies else \
        line_end(len(answer.rstrip("\n").split("\n")) + 1 if kind == "block" else 1)
    parents = parent_texts(model, tokenizer, cache, logits, len(prompt), heal, branches,
                           max_new, end_ids, end)
    texts = candidate_texts(answer, parents, kind, prefix)
    if kind == "function":
        return score_texts(model, tokenizer, cache, logits, len(prompt), texts, prefix, "\n",
                           heal, 1, end_ids, per_token=True)
    return score_texts(model, tokenizer, cache, logits, len(prompt), texts, prefix, suffix,
                       heal, suffix_lines, end_ids)
