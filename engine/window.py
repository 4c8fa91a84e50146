"""Context windows: which part of a file the model sees around the hole, measured in tokens.

One module for every caller: the engine fits whole files into the model's context, the editor
front ends cut their (smaller) latency windows, and training builds the same windows it will see
at inference. Windows are cut at line boundaries and keep the lines nearest the hole, because
the code next to the cursor is what predicts it (the same choice as llama.vim's ring context and
Copilot's prompt assembly).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.healing import plan_healing

BYTES_PER_TOKEN_BOUND = 8
"""Code averages 3-4 bytes per token; reading 8 bytes per budgeted token is a safe cheap bound."""


@dataclass
class InfillWindow:
    prefix: str
    suffix: str
    replace_from: int
    """Document offset where the suggestion's text starts (<= cursor when healed)."""
    cursor: int
    """Document offset of the request: the suggestion replaces ``replace_from:cursor``."""


def _whole_lines_within(lines, tokenizer, budget: int) -> list[str]:
    """Take lines in the given order until the next one would exceed ``budget`` tokens."""
    out: list[str] = []
    used = 0
    for line in lines:
        n = len(tokenizer.encode(line))
        if used + n > budget:
            break
        out.append(line)
        used += n
    return out


def tail_by_tokens(text: str, tokenizer, budget: int) -> str:
    """The last whole lines of ``text`` that fit in ``budget`` tokens; the last ``budget``
    tokens when even the last line is longer (minified code, one huge literal)."""
    if budget <= 0:
        return ""
    lines = text[-budget * BYTES_PER_TOKEN_BOUND:].splitlines(keepends=True)
    kept = "".join(reversed(_whole_lines_within(reversed(lines), tokenizer, budget)))
    if not kept and text:
        return tokenizer.decode(tokenizer.encode(lines[-1])[-budget:])
    return kept


def head_by_tokens(text: str, tokenizer, budget: int) -> str:
    """The first whole lines of ``text`` that fit in ``budget`` tokens (the first ``budget``
    tokens when even the first line is longer)."""
    if budget <= 0:
        return ""
    lines = text[:budget * BYTES_PER_TOKEN_BOUND].splitlines(keepends=True)
    kept = "".join(_whole_lines_within(lines, tokenizer, budget))
    if not kept and text:
        return tokenizer.decode(tokenizer.encode(lines[0])[:budget])
    return kept


def anchored_tail(text: str, tokenizer, budget: int, grid: int | None = None) -> str:
    """Like ``tail_by_tokens``, but the window starts at the first line at or after a multiple
    of ``grid`` characters: as the cursor moves down, the start stays put for about ``grid``
    characters instead of moving with every line, so consecutive requests share their first
    tokens and ``engine.reuse`` can skip them. Costs up to ``grid`` characters of context and
    a line. The default grid is the power of two in (1/4, 1/2] of the window's characters: it
    changes only when the window's length in characters halves or doubles."""
    tight = tail_by_tokens(text, tokenizer, budget)
    start = len(text) - len(tight)
    grid = grid or 1 << max(0, (len(tight) // 2).bit_length() - 1)
    grid = -(-start // grid) * grid  # rounded up
    line = text.find("\n", max(grid - 1, start)) + 1 if grid > start else start
    return text[line:] if 0 < line < len(text) else tight


def build_infill(text: str, offset: int, tokenizer, prefix_tokens: int,
                 suffix_tokens: int, stable_start: bool = False) -> InfillWindow:
    """An editor request at ``offset`` of ``text``: prefix/suffix windows of the given sizes.

    When the cursor sits in indentation the prefix backs up to the line start, so the model
    writes the indentation itself (the tokenizer merges a leading space into the next word).
    ``stable_start``: the prefix window starts on a grid (``anchored_tail``), for requests
    made as the user types.
    """
    before, after = text[:offset], text[offset:]
    line_start = before.rfind("\n") + 1
    replace_from = offset
    if before[line_start:].strip() == "":
        before, replace_from = before[:line_start], line_start
    tail = anchored_tail if stable_start else tail_by_tokens
    return InfillWindow(tail(before, tokenizer, prefix_tokens),
                        head_by_tokens(after, tokenizer, suffix_tokens), replace_from, offset)


def outside_window(before: str, after: str, prefix: str, suffix: str) -> tuple[str, str]:
    """What a window leaves out of its document: the text of ``before`` (all of the document
    before the hole) ahead of the window's ``prefix``, and of ``after`` past its ``suffix``;
    empty for a side the window is not a cut of."""
    head = before[:len(before) - len(prefix)] if before.endswith(prefix) else ""
    tail = after[len(suffix):] if after.startswith(suffix) else ""
    return head, tail


def fit_infill(prefix: str, suffix: str, tokenizer, budget: int) -> tuple[str, str, str | None]:
    """Prefix and suffix cut to ``budget`` tokens in all, nearest lines kept; unchanged when they
    fit. The third value is one sentence saying what was cut (None when nothing was).

    The suffix gets what the prefix leaves, but at least a quarter of the budget when both are
    long: code after the hole constrains it less than code before it.
    """
    if budget < 0:  # the shrinking loop below would never end: a caller sized its canvas wrong
        raise ValueError(f"fit_infill needs a budget of at least 0 tokens, got {budget}")
    n_pre, n_suf = len(tokenizer.encode(prefix)), len(tokenizer.encode(suffix))
    if n_pre + n_suf <= budget:
        return prefix, suffix, None
    suf_budget = min(n_suf, max(budget // 4, budget - n_pre))
    pre_budget = budget - suf_budget
    while True:  # per-line counts can differ from the whole text's by a merge or two
        pre = tail_by_tokens(prefix, tokenizer, pre_budget)
        suf = head_by_tokens(suffix, tokenizer, suf_budget)
        k_pre, k_suf = len(tokenizer.encode(pre)), len(tokenizer.encode(suf))
        if k_pre + k_suf <= budget:
            break
        pre_budget, suf_budget = pre_budget * 9 // 10, suf_budget * 9 // 10
    if not n_suf:  # a prompt to continue (``Engine.generate``): as ``fit_prompt`` says it
        return pre, suf, prompt_note(n_pre, k_pre)
    note = (f"the file is {n_pre + n_suf} tokens, more than the model's context; the model saw "
            f"the {k_pre} prefix and {k_suf} suffix tokens nearest the hole")
    return pre, suf, note


def fit_prompt(prompt: str, tokenizer, budget: int) -> tuple[str, str | None]:
    """A generation prompt cut to its last ``budget`` tokens of whole lines (note as above)."""
    n = len(tokenizer.encode(prompt))
    if n <= budget:
        return prompt, None
    kept = tail_by_tokens(prompt, tokenizer, budget)
    while len(tokenizer.encode(kept)) > budget:
        budget = budget * 9 // 10
        kept = tail_by_tokens(prompt, tokenizer, budget)
    return kept, prompt_note(n, len(tokenizer.encode(kept)))


def prompt_note(n: int, kept: int) -> str:
    """What a prompt of ``n`` tokens cut to its last ``kept`` says (``fit_prompt``, and
    ``fit_infill`` when there is no suffix)."""
    return (f"the prompt is {n} tokens, more than the model's context; the model saw its last "
            f"{kept}")


def infill_ids(tokenizer, prefix: str, suffix: str, context: str, room: int
               ) -> tuple[list[int], list[int], str | None]:
    """Token ids of the prompt around a hole, exactly as the engine and training build it:
    ``context + prefix`` (repository context first, encoded together) and ``suffix``, cut to
    ``room`` tokens. The nearby prefix and suffix come first; the context gets what is left, at
    most half of the room (it was already sized to its own budget by ``engine.repo``). The two
    cuts are healed first (``engine.healing``) for tokenizers that merge across a newline."""
    prefix, suffix = plan_healing(tokenizer, prefix, suffix).prompt(prefix, suffix)
    ctx = tokenizer.encode(context) if context else []
    if len(ctx) > room // 2:
        context, ctx = "", []  # never squeeze the code next to the hole for far-away context
    prefix, suffix, note = fit_infill(prefix, suffix, tokenizer, room - len(ctx))
    pre = tokenizer.encode(context + prefix)
    suf = tokenizer.encode(suffix)
    while len(pre) + len(suf) > room and context:  # a merge at the seam: drop the context
        context, pre = "", tokenizer.encode(prefix)
    return pre, suf, note
