"""Where a multi-line infill ends (engine.scope), and the engine's ``limit_scope`` setting."""

from dataclasses import replace

import pytest

from engine.scope import limit_scope, scope_settled

BODY = "def wrapper(*args):\n    k = key(*args)\n"


CUT_CASES = [
    # the next function at the prefix's level ends a block inside a body
    (BODY, "    v = f(k)\n    cache[k] = v\n\ndef other():\n    pass\n", "    return v\n",
     "    v = f(k)\n    cache[k] = v\n\n"),
    # a new block's body ends where a line comes back to the line that opened it
    ("    for x in xs:\n", "        total += x\n    return total\n", "    print(total)\n",
     "        total += x\n"),
    # a closing line stays when the suffix goes on lower still (the hole ends its block)
    ("def g(xs):\n    for x in xs:\n", "        total += x\n    return total\n",
     "\n\ndef h():\n    pass\n", "        total += x\n    return total\n"),
    # mid-line, the statement ends at the next line not deeper than its own
    ("    y = f(", "a,\n        b)\n    z = 2\n", ")\n    return y\n", "a,\n        b)\n"),
    # repeating the suffix's first lines: cut where the repetition starts
    (BODY, "    v = f(k)\n    return v\n\ndef other():\n", "    return v\n\ndef other():\n",
     "    v = f(k)\n"),
]


@pytest.mark.parametrize("prefix,text,suffix,kept", CUT_CASES)
def test_limit_scope_cuts_at_the_first_line_out_of_the_hole(prefix, text, suffix, kept):
    assert limit_scope(text, prefix, suffix) == kept


ENDINGS = ["", "\n", "    junk = 1\n", "def zzz():\n    pass\n", "    return v\n\ndef other():\n"]


@pytest.mark.parametrize("prefix,text,suffix,kept", CUT_CASES)
def test_a_settled_start_gets_the_same_cut_whatever_follows(prefix, text, suffix, kept):
    """Once ``scope_settled`` says the cut is known, no continuation of the committed start
    changes what ``limit_scope`` keeps: a decoder that stops there loses nothing."""
    settled_at = [k for k in range(len(text) + 1) if scope_settled(text[:k], prefix, suffix)]
    for k in settled_at:
        for ending in ENDINGS:
            assert limit_scope(text[:k] + ending, prefix, suffix) == kept, (k, ending)


def test_a_start_is_settled_once_the_line_leaving_the_scope_is_complete():
    done = "    v = f(k)\n    cache[k] = v\n\ndef other():\n"
    assert scope_settled(done, BODY, "    return v\n")  # "    pass\n" need not be decoded
    assert not scope_settled(done[:-1], BODY, "    return v\n")


@pytest.mark.parametrize("start", [
    "    v = f(k)\n",  # still inside: more lines may follow
    "    v = f(k)\ndef oth",  # the line that leaves the scope is not complete yet
    "    v = f(k)\n    return v\n",  # repeats the suffix's first line: is its second next?
])
def test_an_open_start_is_not_settled(start):
    assert not scope_settled(start, BODY, "    return v\n    y = 2\n")


@pytest.mark.parametrize("prefix,text,suffix", [
    # statements at the block's own level, blank lines and deeper lines are all in scope
    (BODY, "    v = f(k)\n\n    if v:\n        log(v)\n    return v", "\n\ndef h():\n"),
    # one short line like the suffix's is not a repetition unless the next one matches too
    (BODY, "    return v\n    x = 1\n", "    return v\n    y = 2\n"),
    # punctuation-only suffix lines never cut
    ("    xs = [\n", "        1,\n", "    ]\n"),
    # no prefix: nothing to compare with
    ("", "x = 1\ny = 2\n", ""),
])
def test_limit_scope_keeps_text_that_stays_in_the_hole(prefix, text, suffix):
    assert limit_scope(text, prefix, suffix) == text


def test_an_unfinished_canvas_loses_its_partial_last_line_only():
    text = "    if x is None:\n        return f(x)\n    return _cache(LRU(128),"
    assert limit_scope(text, BODY, "") == text  # the canvas ended with an end token
    assert limit_scope(text, BODY, "", unfinished=True) == \
        "    if x is None:\n        return f(x)\n"
    # a single partial line is all there is: kept
    assert limit_scope("    return f(", BODY, "", unfinished=True) == "    return f("


def test_a_completion_that_is_only_the_suffix_becomes_empty():
    assert limit_scope("    return v\n\ndef other():\n", BODY, "    return v\n\ndef other():\n") \
        == ""


class _Writes:
    """A denoiser that writes fixed tokens from canvas slot 0 on, most confident first."""

    def __init__(self, vocab: int, start: int, ids: list[int]) -> None:
        self.vocab, self.start, self.ids = vocab, start, ids

    def logits(self, x, attention_mask=None, position_ids=None):
        import torch

        out = torch.zeros(*x.shape, self.vocab)
        for i, token in enumerate(self.ids):
            # Dream's shifted logits: position p predicts the token at p + 1
            out[:, self.start + i - 1, token] = 10.0 - i * 0.01
        return out


WRITTEN = "    v = f(k)\n\ndef other():\n    pass\n"
"""What the scripted engine writes between ``BODY`` and ``AFTER``: a line in the hole, then the
next function."""
AFTER = "    return v\n"


def _writer(e):
    """(engine that always writes ``WRITTEN`` into the hole, its fixed-canvas settings)."""
    from engine.api import Engine, SpecialIds

    ids = e.tokenizer.encode(WRITTEN)
    pre, _, _ = e.infill_prompt(BODY, AFTER, len(ids))
    writer = Engine(e.folder, e.tokenizer, _Writes(e.tokenizer.vocab_size, len(pre), ids),
                    SpecialIds(e.mask_id, e.eos_id, e.pad_id, e.context), e.device)
    return writer, writer.settings(max_new_tokens=len(ids), steps=len(ids), length="fixed",
                                   temperature=0.0, block_length=None)


def test_the_engine_cuts_an_infill_only_when_asked(tiny_engine):
    writer, s = _writer(tiny_engine)
    plain = writer.infill(BODY, AFTER, s)
    assert plain.completion == WRITTEN and "scope_cut_chars" not in plain.extra
    cut = writer.infill(BODY, AFTER, replace(s, limit_scope=True))
    assert cut.completion == "    v = f(k)\n\n"
    assert cut.extra["scope_cut_chars"] > 0
    # decoding stopped once the line leaving the scope was complete: the rest was never denoised
    assert cut.extra["forward_passes"] < plain.extra["forward_passes"]


def test_a_batched_infill_is_cut_to_its_scope_as_a_request_alone_is(tiny_engine):
    # the server batches concurrent requests (engine.batch): a block asked with limitScope
    # must come back cut there too, not with the next function the canvas went on to write
    from engine.batch import infill_batch

    writer, s = _writer(tiny_engine)
    holes = [(BODY, AFTER, "")] * 2
    *_, plain = infill_batch(writer, holes, s)
    assert [c.completion for c in plain] == [WRITTEN, WRITTEN]
    *_, cut = infill_batch(writer, holes, replace(s, limit_scope=True))
    alone = writer.infill(BODY, AFTER, replace(s, limit_scope=True))
    assert [c.completion for c in cut] == [alone.completion] * 2 == ["    v = f(k)\n\n"] * 2
    assert all(c.extra["scope_cut_chars"] > 0 for c in cut)
