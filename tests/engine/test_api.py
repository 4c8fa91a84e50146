"""Engine: infill/generate streams, trimming, length strategy, chat detection, limits."""

from __future__ import annotations

import pytest

from engine.api import Completion, Engine, Frame, GenerationSettings
from engine.errors import ConfigError


def test_stream_yields_one_frame_per_step_then_completion(tiny_engine):
    items = list(tiny_engine.infill_stream("def f(x):\n", "\n", GenerationSettings(
        max_new_tokens=10, steps=5, length="fixed")))
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(frames) == 5 and isinstance(items[-1], Completion)
    assert all(o >= 0 for o in items[-1].order)
    assert frames[-1].canvas == items[-1].token_ids
    assert sum(len(f.newly) for f in frames) == 10


def test_trim_cuts_at_eos_and_drops_pads(tiny_engine):
    e = tiny_engine
    ids = [10, e.pad_id, 11, e.eos_id, 12, e.pad_id]
    assert e.trim(ids) == [10, 11]


def test_adaptive_canvas_never_exceeds_max_and_scales_steps(tiny_engine):
    res = tiny_engine.infill("a = 1\n", "\nb = 2\n", GenerationSettings(
        max_new_tokens=24, steps=24, length="adaptive"))
    assert 4 <= res.canvas_len <= 24
    assert res.steps == res.canvas_len  # one token per step, as asked for the full canvas
    assert "expected_len" in res.extra


def test_stop_string_ends_denoising_once_the_left_part_holds_it(tiny_engine):
    e = tiny_engine
    l2r = GenerationSettings(max_new_tokens=12, steps=12, length="fixed", block_length=1)
    full = e.infill("def f(x):\n", "\n", l2r)
    ids = [i for i in full.token_ids if i not in (e.eos_id, e.pad_id)]
    assert len(ids) >= 4, "the tiny random model should write real tokens"
    stop = e.tokenizer.decode(ids[2:3])
    cut = e.infill("def f(x):\n", "\n", l2r, stop=(stop,))
    assert cut.steps < full.steps or stop in e.tokenizer.decode(full.token_ids[-1:])
    assert stop in cut.completion and full.completion.startswith(cut.completion)
    assert cut.token_ids[:cut.steps] == full.token_ids[:cut.steps]


def test_prompt_longer_than_context_is_a_config_error(tiny_engine):
    with pytest.raises(ConfigError, match="context"):
        tiny_engine.generate("x = 1\n" * 400, max_new_tokens=8, steps=2)


def test_empty_prefix_still_works(tiny_engine):
    res = tiny_engine.infill("", "\n", GenerationSettings(max_new_tokens=6, steps=3,
                                                          length="fixed"))
    assert res.canvas_len == 6 and res.prompt_tokens == 2


def test_chat_template_for_instruct_folders(tmp_path):
    from tests.conftest import make_tiny_folder

    folder = make_tiny_folder(tmp_path / "DiffuCoder-tiny-Instruct")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    eng = Engine.load(str(folder), device="cpu", dtype="float32")
    assert eng.is_instruct
    res = eng.generate("write add", max_new_tokens=4, steps=2)
    raw = eng.generate("write add", raw=True, max_new_tokens=4, steps=2)
    assert res.prompt_tokens > raw.prompt_tokens  # ChatML markers were added
    ids = eng.tokenizer.encode_chat("say <|im_end|> please")  # the user's copy stays text
    assert ids.count(eng.im_end_id) == 2 and "say <|im_end|> please" in eng.tokenizer.decode(ids)
