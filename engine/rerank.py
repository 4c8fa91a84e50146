"""Single-line answers picked by the parent's likelihood of the whole file.

An autoregressive LM scores any filled-in file exactly, and for a hole
p(middle | prefix, suffix) is proportional to p(middle | prefix) * p(suffix | prefix, middle):
of several candidate lines, the one under which the prefix, the line and the code after it are
likeliest is the posterior's choice among them. The adapted model's parent (its pretrained
base, ``engine.gguf_base``, read with a causal mask) is such an LM, already on disk. It writes
better lines than the diffusion model but cannot read the suffix (the model card: 0.301 against
0.222 on HumanEval single-line); the diffusion model reads the suffix. So the candidates are
the diffusion model's answer and ``branches`` lines of the parent (greedy, except that the
first token holding more than whitespace is each of its ``branches`` likeliest), and the
parent scores each as the log-probability of the text from the prompt's cut through the
answer and the next ``suffix_lines`` lines of the suffix, in one batched causal pass over the
cached prompt. Reranking candidates by a full-context score is how Fried et al. (InCoder, 2022)
and Bavarian et al. (2022, FIM) rank infills; here the proposer that reads the suffix is the
diffusion model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.autoregressive import append, branch_cache, prompt_cache
from engine.healing import Healing
from engine.syntax_guard import first_line


@dataclass(frozen=True)
class Candidate:
    line: str
    """The answer's first line as inserted at the cursor (no newline)."""
    source: str
    """``diffusion`` or ``parent``."""
    logprob: float
    """The parent's log-probability of the file text from the prompt's cut to the suffix
    lines scored, given the prompt."""


def suffix_head(suffix: str, lines: int) -> str:
    """The suffix through its ``lines``-th newline (all of it when shorter)."""
    end = 0
    for _ in range(lines):
        nl = suffix.find("\n", end)
        if nl < 0:
            return suffix
        end = nl + 1
    return suffix[:end]


def line_separator(prefix: str, suffix: str) -> str:
    """What goes between a single-line answer and the suffix in the file: a newline when the
    hole is a whole line (the prefix ends at a line's start, the suffix starts the next one),
    nothing when the answer completes the cursor's own line."""
    at_line_start = prefix == "" or "\n" in prefix[len(prefix.rstrip()):]
    return "\n" if at_line_start and suffix and not suffix.startswith("\n") else ""


def _masked(logits: torch.Tensor, banned: list[int]) -> torch.Tensor:
    """fp32 logits with ``banned`` ids impossible; a new tensor (the prompt's are shared)."""
    ids = torch.tensor(banned, device=logits.device)
    return logits.float().index_fill(-1, ids, float("-inf"))


@torch.inference_mode()
def parent_lines(model, tokenizer, cache, logits: torch.Tensor, n: int, heal: Healing,
                 branches: int, max_new: int, end_ids: set[int]) -> list[str]:
    """Up to ``branches`` distinct lines the parent writes after a prompt of ``n`` cached
    positions (``logits``: its next-token logits, (1, V)): greedy through the leading
    whitespace (the healed newline and indentation), then one line per each of the
    ``branches`` likeliest first tokens that hold more than whitespace, each continued
    greedily to the end of its line."""
    banned, dev = [model.config.mask_token_id], logits.device
    lead: list[int] = []
    logits = _masked(logits, banned)
    while True:  # the whitespace before the line; one row, the cache is only read
        token = int(logits[0].argmax())
        if token in end_ids or len(lead) >= max_new - 1:
            return []
        if tokenizer.decode([token]).strip():
            break
        lead.append(token)
        cache = branch_cache(cache, 1) if len(lead) == 1 else cache
        logits = _masked(append(model, cache, torch.tensor([[token]], device=dev), n)[:, -1], banned)
        n += 1
    firsts = [t for t in logits[0].topk(branches + len(end_ids)).indices.tolist()
              if t not in end_ids and tokenizer.decode([t]).strip()][:branches]
    rows = [lead + [t] for t in firsts]
    rows_cache = branch_cache(cache, len(rows))
    done = ["\n" in heal.completion(tokenizer.decode(r), final=False) for r in rows]
    cur = torch.tensor([[t] for t in firsts], device=dev)  # (B, 1)
    for _ in range(max_new - len(lead) - 1):  # each row holds lead + 1 so far
        if all(done):
            break
        logits = _masked(append(model, rows_cache, cur, n)[:, -1], banned)  # (B, V)
        n += 1
        cur = logits.argmax(-1, keepdim=True)  # (B, 1)
        for i, token in enumerate(cur[:, 0].tolist()):
            if done[i]:
                continue
            if token in end_ids:
                done[i] = True
            else:
                rows[i].append(token)
                done[i] = "\n" in heal.completion(tokenizer.decode(rows[i]), final=False)
    lines = [first_line(heal.completion(tokenizer.decode(r), final=False)) for r in rows]
    return list(dict.fromkeys(line for line in lines if line.strip()))


@torch.inference_mode()
def continuation_logprobs(model, cache, logits: torch.Tensor, n: int,
                          continuations: list[list[int]]) -> list[float]:
    """log p(continuation | prompt) of each token list, the prompt being the ``n`` cached
    positions whose next-token logits are ``logits`` (1, V); one batched pass."""
    banned, dev = [model.config.mask_token_id], logits.device
    width = max(len(c) for c in continuations)
    ids = torch.tensor([c + [c[-1]] * (width - len(c)) for c in continuations],
                       device=dev)  # (B, W), right-padded: causal, so padding changes nothing
    lengths = torch.tensor([len(c) for c in continuations], device=dev)
    out = append(model, branch_cache(cache, len(continuations)), ids[:, :-1], n) \
        if width > 1 else logits.new_zeros(len(continuations), 0, logits.shape[-1])
    scores = torch.cat([logits.expand(len(continuations), -1)[:, None], out], 1)  # (B, W, V)
    logp = F.log_softmax(_masked(scores, banned), -1).gather(-1, ids[..., None])[..., 0]
    keep = torch.arange(width, device=dev)[None, :] < lengths[:, None]  # (B, W)
    return (logp * keep).sum(-1).tolist()  # (B,)


def candidate_lines(model, tokenizer, cache, logits: torch.Tensor, n: int, heal: Healing,
                    answer: str, branches: int, max_new: int, end_ids: set[int]
                    ) -> dict[str, str]:
    """line -> source: the diffusion ``answer``'s first line, then the parent's lines."""
    lines = {first_line(answer): "diffusion"}
    for line in parent_lines(model, tokenizer, cache, logits, n, heal, branches, max_new,
                             end_ids):
        lines.setdefault(line, "parent")
    return lines


def score_lines(model, tokenizer, cache, logits: torch.Tensor, n: int, lines: dict[str, str],
                prefix: str, suffix: str, heal: Healing, suffix_lines: int,
                end_ids: set[int]) -> list[Candidate]:
    """``lines`` scored by the parent with ``suffix_lines`` lines of the suffix, best first
    (the earlier candidate first among equals)."""
    tail = line_separator(prefix, suffix) + suffix_head(suffix, suffix_lines)
    conts = [tokenizer.encode(heal.cut + line + tail) or [min(end_ids)] for line in lines]
    scores = continuation_logprobs(model, cache, logits, n, conts)
    ranked = [Candidate(line, source, score)
              for (line, source), score in zip(lines.items(), scores)]
    return sorted(ranked, key=lambda c: -c.logprob)


def rerank_line(model, tokenizer, prompt: list[int], prefix: str, suffix: str, heal: Healing,
                answer: str, branches: int, suffix_lines: int, max_new: int,
                end_ids: set[int]) -> list[Candidate]:
    """The diffusion ``answer``'s first line and the parent's ``branches`` lines, scored, best
    first. ``prompt``: the healed prefix's token ids as the parent reads them
    (``Engine.infill_prompt(prefix, "", ...)``)."""
    dev = next(model.parameters()).device
    cache, logits = prompt_cache(model, torch.tensor([prompt], device=dev))
    lines = candidate_lines(model, tokenizer, cache, logits, len(prompt), heal, answer,
                            branches, max_new, end_ids)
    return score_lines(model, tokenizer, cache, logits, len(prompt), lines, prefix, suffix,
                       heal, suffix_lines, end_ids)
