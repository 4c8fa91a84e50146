"""Single-line and block answers reranked by the parent's likelihood of the file (engine.rerank)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.api import Engine
from engine.autoregressive import greedy_continue, prompt_cache
from engine.errors import ConfigError
from engine.healing import plan_healing
from engine.loading import load_model
from engine.rerank import (
    candidate_texts,
    continuation_logprobs,
    first_lines,
    line_end,
    line_runs,
    line_separator,
    parent_texts,
    request_kind,
    rerank,
    scope_end,
    suffix_head,
)

PREFIX = "def add(a, b):\n    total = a + b\n"
SUFFIX = "    return total\n\n\ndef is_even(n):\n    return n % 2 == 0\n"


def test_continuation_logprobs_equal_a_full_causal_pass(tiny_model):
    model = load_model(tiny_model, "cpu", "float32").model
    prompt = [40, 41, 42, 43, 44]
    conts = [[50, 51, 52], [60], [70, 71, 72, 73, 74]]
    cache, logits = prompt_cache(model, torch.tensor([prompt]))
    got = continuation_logprobs(model, cache, logits, len(prompt), conts)
    for cont, score in zip(conts, got):
        full = model(torch.tensor([prompt + cont]), causal=True)[0].float()  # (L, V)
        full[:, model.config.mask_token_id] = float("-inf")
        logp = F.log_softmax(full, -1)
        want = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(cont))
        assert score == pytest.approx(want, abs=1e-4)
    # the prompt's cache is only read: scoring again gives the same numbers
    assert continuation_logprobs(model, cache, logits, len(prompt), conts) == \
        pytest.approx(got, abs=1e-5)


def test_first_parent_line_is_the_greedy_line_and_branches_differ(tiny_engine):
    model, tok = tiny_engine.denoiser.loaded.model, tiny_engine.tokenizer
    heal = plan_healing(tok, PREFIX, SUFFIX)
    prompt = tiny_engine.infill_prompt(PREFIX, "", 24)[0]
    cache, logits = prompt_cache(model, torch.tensor([prompt]))
    ends = set(tiny_engine.end_ids)
    lines = parent_texts(model, tok, cache, logits, len(prompt), heal, 3, 24, ends)
    greedy = greedy_continue(model, prompt, 24, ends)
    written = heal.completion(tok.decode(greedy), final=False)
    assert lines, "a random model still writes some line"
    assert lines[0] == first_lines(written, 1)
    assert len(set(lines)) == len(lines) <= 3
    assert all(line.strip() and "\n" not in line for line in lines)
    # a block: the same greedy row, continued through its second line
    blocks = parent_texts(model, tok, cache, logits, len(prompt), heal, 3, 24, ends,
                          line_end(2))
    assert blocks[0] == first_lines(written, 2).rstrip("\n")
    assert all(b.count("\n") <= 1 for b in blocks)


def test_a_block_is_a_candidate_at_every_length_ending_on_code():
    assert first_lines("a\nb\nc", 2) == "a\nb" and first_lines("a", 3) == "a"
    assert line_runs("x = 1\n\n    y = 2\nz") == ["x = 1", "x = 1\n\n    y = 2",
                                                    "x = 1\n\n    y = 2\nz"]
    got = candidate_texts("a\nb\n", ["a\nc", "d"], "block")
    assert got == {"a": "diffusion", "a\nb": "diffusion", "a\nc": "parent", "d": "parent"}
    assert candidate_texts("a\nb\n", ["c"], "line") == {"a": "diffusion", "c": "parent"}


def test_a_function_is_a_candidate_whole_and_ends_with_its_scope():
    prefix = 'def f(x):\n    """Double."""\n'
    body = "    y = x * 2\n\n    return y\n"
    # the diffusion answer is cut where it leaves the function; blank answers are no candidate
    got = candidate_texts(body + "\n\ndef g():\n    pass\n", ["    return 2 * x", "  "],
                          "function", prefix)
    assert got == {body.rstrip("\n"): "diffusion", "    return 2 * x": "parent"}
    end = scope_end(prefix)
    assert end(body) is None  # still inside: the body may go on
    assert end(body + "\nprint(f(2))").rstrip("\n") == body.rstrip("\n")
    assert line_end(2)("a\nb") is None and line_end(2)("a\nb\nc") == "a\nb"
    assert [request_kind(True, "x"), request_kind(False, "  x\n"), request_kind(False, "\n ")] \
        == ["line", "block", "function"]


def test_suffix_head_and_line_separator():
    assert suffix_head("a\nb\nc\n", 2) == "a\nb\n"
    assert suffix_head("a\nb", 5) == "a\nb"
    assert suffix_head("a\nb\n", 0) == ""
    assert line_separator("x = 1\n", "y = 2\n") == "\n"  # a whole-line hole
    assert line_separator("x = 1\n    ", "y = 2\n") == "\n"  # indentation typed
    assert line_separator("x = f(", ")\n") == ""  # completes the cursor's own line
    assert line_separator("x = 1\n", "\ny = 2\n") == ""  # the line's own newline follows


def test_the_answer_is_the_candidate_the_parent_scores_highest(tiny_adapter, tiny_model):
    engine = Engine.load(str(tiny_adapter), device="cpu", dtype="float32")
    assert engine.parent is not None and engine.parent is not engine.denoiser.loaded.model
    plain = engine.settings(max_new_tokens=16, steps=16, temperature=0.0, stop=("\n",),
                            length="fixed")
    alone = engine.infill(PREFIX, SUFFIX, plain)
    assert "rerank" not in alone.extra
    reranked = engine.infill(PREFIX, SUFFIX, plain, parent_branches=3, rerank_suffix_lines=4)
    prompt = engine.infill_prompt(PREFIX, "", 16)[0]
    ranked = rerank(engine.parent, engine.tokenizer, prompt, PREFIX, SUFFIX,
                    plan_healing(engine.tokenizer, PREFIX, SUFFIX), alone.completion, 3, 4,
                    16, set(engine.end_ids))
    assert first_lines(reranked.completion, 1) == ranked[0].text
    assert reranked.extra["rerank"] == {"source": ranked[0].source, "candidates": len(ranked)}
    assert [c.logprob for c in ranked] == sorted((c.logprob for c in ranked), reverse=True)
    assert {c.source for c in ranked} >= {"diffusion"} and len(ranked) >= 2
    # the parent is the base, so a prefix-only parent line appears among the candidates
    base = load_model(tiny_model, "cpu", "float32").model
    greedy = greedy_continue(base, prompt, 16, set(engine.end_ids))
    heal = plan_healing(engine.tokenizer, PREFIX, SUFFIX)
    line = first_lines(heal.completion(engine.tokenizer.decode(greedy), final=False), 1)
    assert not line.strip() or line in {c.text for c in ranked}

    # a line the syntax guard rejects is never chosen over one it accepts
    last = ranked[-1].text
    guarded = engine.infill(PREFIX, SUFFIX, plain, parent_branches=3, rerank_suffix_lines=4,
                            accept=lambda text: first_lines(text, 1) == last)
    assert first_lines(guarded.completion, 1) == last and guarded.extra["accepted"] is True


def test_a_block_answer_is_the_length_and_source_the_parent_scores_highest(tiny_adapter):
    engine = Engine.load(str(tiny_adapter), device="cpu", dtype="float32")
    block = engine.settings(max_new_tokens=24, steps=24, temperature=0.0, length="fixed")
    alone = engine.infill(PREFIX, SUFFIX, block)
    reranked = engine.infill(PREFIX, SUFFIX, block, parent_branches=2, rerank_suffix_lines=4)
    heal = plan_healing(engine.tokenizer, PREFIX, SUFFIX)
    prompt = engine.infill_prompt(PREFIX, "", 24)[0]
    ranked = rerank(engine.parent, engine.tokenizer, prompt, PREFIX, SUFFIX, heal,
                    alone.completion, 2, 4, 24, set(engine.end_ids), "block")
    # the file gets the best candidate and then the newline before the suffix's line
    assert reranked.completion == ranked[0].text + "\n"
    assert reranked.extra["rerank"] == {"source": ranked[0].source, "candidates": len(ranked)}
    assert [c.logprob for c in ranked] == sorted((c.logprob for c in ranked), reverse=True)
    runs = line_runs(alone.completion.rstrip("\n"))
    assert {c.text for c in ranked if c.source == "diffusion"} == set(runs)


def test_a_function_answer_is_the_whole_answer_the_parent_scores_highest_per_token(
        tiny_adapter):
    engine = Engine.load(str(tiny_adapter), device="cpu", dtype="float32")
    block = engine.settings(max_new_tokens=24, steps=24, temperature=0.0, length="fixed")
    alone = engine.infill(PREFIX, "", block)
    reranked = engine.infill(PREFIX, "", block, parent_branches=2)
    heal = plan_healing(engine.tokenizer, PREFIX, "")
    prompt = engine.infill_prompt(PREFIX, "", 24)[0]
    ranked = rerank(engine.parent, engine.tokenizer, prompt, PREFIX, "", heal,
                    alone.completion, 2, 8, 24, set(engine.end_ids), "function")
    assert reranked.completion == ranked[0].text  # nothing follows a function's last line
    assert reranked.extra["rerank"] == {"source": ranked[0].source, "candidates": len(ranked)}
    # scores are means per token: each is the summed log-probability over the tokens scored
    for c in ranked:
        cont = engine.tokenizer.encode(heal.cut + c.text + "\n")
        total = continuation_logprobs(engine.parent, *prompt_cache(
            engine.parent, torch.tensor([prompt])), len(prompt), [cont])[0]
        assert c.logprob == pytest.approx(total / len(cont), abs=1e-4)
    assert [c.logprob for c in ranked] == sorted((c.logprob for c in ranked), reverse=True)
    # code generation is that same request: a prompt and a blank suffix
    generated = engine.generate(PREFIX, block, raw=True, parent_branches=2)
    assert generated.completion == reranked.completion


def test_a_body_checked_by_examples_is_chosen_among_the_parents_whole_bodies(tiny_adapter):
    prefix = 'def double(x):\n    """Twice x.\n\n    >>> double(2)\n    4\n    """\n'
    suffix = "\n\nprint(double(3))\n"
    engine = Engine.load(str(tiny_adapter), device="cpu", dtype="float32")
    block = engine.settings(max_new_tokens=24, steps=24, temperature=0.0, length="fixed")
    alone = engine.infill(prefix, suffix, block)
    checked = engine.infill(prefix, suffix, block, parent_branches=2, check_examples=True)
    heal = plan_healing(engine.tokenizer, prefix, suffix)
    prompt = engine.infill_prompt(prefix, "", 24)[0]
    ranked = rerank(engine.parent, engine.tokenizer, prompt, prefix, suffix, heal,
                    alone.completion, 2, 8, 24, set(engine.end_ids), "block", whole_bodies=True)
    # a body before more code (a block) is checked too; the random adapter passes no example,
    # so the order is the parent's, over its answers written to the body's end
    assert checked.extra["rerank"]["examples_passed"] == 0
    assert checked.extra["rerank"]["candidates"] == len(ranked)
    assert checked.completion == ranked[0].text + line_separator(prefix, suffix)


def test_a_model_without_parent_answers_alone(tiny_engine):
    assert tiny_engine.parent is None
    s = tiny_engine.settings(max_new_tokens=12, steps=12, temperature=0.0, stop=("\n",),
                             length="fixed")
    with_branches = tiny_engine.infill(PREFIX, SUFFIX, s, parent_branches=2)
    assert "rerank" not in with_branches.extra
    assert with_branches.completion == tiny_engine.infill(PREFIX, SUFFIX, s).completion


@pytest.mark.parametrize("bad", [{"parent_branches": 9}, {"parent_branches": -1},
                                 {"rerank_suffix_lines": -2},
                                 {"parent_branches": 0, "check_examples": True}])
def test_bad_rerank_settings_are_refused(tiny_engine, bad):
    with pytest.raises(ConfigError, match="--parent-branches|--rerank-suffix-lines"):
        tiny_engine.settings(**bad)
