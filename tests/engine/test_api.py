"""Engine: infill/generate streams, trimming, length strategy, chat detection, limits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.api import Completion, Engine, Frame, GenerationSettings
from engine.errors import ConfigError, ModelLoadError


def test_stream_yields_one_frame_per_step_then_completion(tiny_engine):
    items = list(tiny_engine.infill_stream("def f(x):\n", "\n", GenerationSettings(
        max_new_tokens=10, steps=5, length="fixed")))
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(frames) == 5 and isinstance(items[-1], Completion)
    assert all(o >= 0 for o in items[-1].order)
    assert frames[-1].canvas == items[-1].token_ids
    assert sum(len(f.newly) for f in frames) == 10


def test_trim_cuts_at_the_first_eos_or_pad_as_upstream(tiny_engine):
    e = tiny_engine
    assert e.trim([10, 11, e.eos_id, 12]) == [10, 11]
    assert e.trim([10, e.pad_id, 11, e.eos_id, 12, e.pad_id]) == [10]


def test_trim_never_glues_text_across_a_still_masked_gap(tiny_engine):
    # an early stop leaves masks: "a", pad settled, "x" committed at slot 4 must give "a"
    e = tiny_engine
    a, x = e.tokenizer.encode("a"), e.tokenizer.encode("x")
    assert e.trim(a + [e.pad_id, e.mask_id, e.mask_id] + x) == a
    assert e.trim(a + [e.mask_id] + x) == a


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
    text = e.tokenizer.decode
    # the first slot (after the first) whose text is new and printable is the stop string
    k = next(k for k in range(1, 12) if text(full.token_ids[k:k + 1]).isprintable()
             and text(full.token_ids[k:k + 1]) not in text(full.token_ids[:k]))
    first = full.token_ids[:k + 1]
    assert not {e.eos_id, e.pad_id} & set(first), "the tiny random model writes real tokens"
    cut = e.infill("def f(x):\n", "\n", l2r, stop=(text(first[k:]),))
    assert cut.steps == k + 1 < full.steps  # left to right: the stop settled at that step
    assert cut.token_ids[:k + 1] == first and e.mask_id in cut.token_ids
    assert cut.completion == text(first)


def test_prompt_longer_than_context_keeps_its_last_lines_and_says_so(tiny_engine):
    prompt = "".join(f"x{i} = {i}\n" for i in range(400))
    res = tiny_engine.generate(prompt, max_new_tokens=8, steps=2)
    assert res.prompt_tokens + 8 <= tiny_engine.context
    assert "last" in res.extra["note"]
    with pytest.raises(ConfigError, match="context"):
        tiny_engine.generate("x", max_new_tokens=tiny_engine.context, steps=2)


def test_infill_on_a_file_longer_than_the_context_keeps_the_nearest_lines(tiny_engine):
    lines = [f"value_{i} = {i}\n" for i in range(1000)]
    prefix, suffix = "".join(lines[:600]), "".join(lines[600:])
    res = tiny_engine.infill(prefix, suffix, max_new_tokens=8, steps=4, length="fixed")
    assert res.prompt_tokens + 8 <= tiny_engine.context
    assert "nearest the hole" in res.extra["note"]
    small = tiny_engine.infill("a = 1\n", "b = 2\n", max_new_tokens=8, steps=4)
    assert "note" not in small.extra


def test_settings_layer_dataclass_then_generation_config_then_overrides(tiny_engine):
    e = tiny_engine
    saved = dict(e.defaults)
    try:
        e.defaults.update(alg="maskgit_plus", steps=7, block_length=4)
        s = e.settings()
        assert (s.alg, s.steps, s.block_length, s.top_p) == ("maskgit_plus", 7, 4, None)
        s = e.settings(steps=3, alg=None, block_length=0, temperature=0.5)
        assert (s.alg, s.steps, s.block_length, s.temperature) == ("maskgit_plus", 3, None, 0.5)
        with pytest.raises(ConfigError, match="unknown generation setting"):
            e.settings(stepz=3)
    finally:
        e.defaults.clear()
        e.defaults.update(saved)


def test_block_decoding_spends_the_steps_asked_for_one_token_or_more_each(tiny_engine):
    frames = [f for f in tiny_engine.infill_stream("def f(x):\n", "\n", tiny_engine.settings(
        max_new_tokens=64, steps=64, block_length=8, length="fixed")) if isinstance(f, Frame)]
    assert len(frames) == 64 and all(len(f.newly) == 1 for f in frames)
    items = list(tiny_engine.infill_stream("def f(x):\n", "\n", tiny_engine.settings(
        max_new_tokens=64, steps=16, block_length=8, length="fixed")))
    frames = [f for f in items if isinstance(f, Frame)]
    assert len(frames) == 16 and all(len(f.newly) == 4 for f in frames)
    assert "note" not in items[-1].extra


def test_block_decoding_says_when_the_steps_must_change(tiny_engine):
    res = tiny_engine.infill("def f(x):\n", "\n", tiny_engine.settings(
        max_new_tokens=32, steps=64, block_length=1, length="fixed"))
    assert res.steps == 32 and "32 denoising steps instead of 64" in res.extra["note"]
    res = tiny_engine.infill("def f(x):\n", "\n", tiny_engine.settings(
        max_new_tokens=32, steps=2, block_length=8, length="fixed"))
    assert res.steps == 4 and "4 denoising steps instead of 2" in res.extra["note"]


def test_adaptive_canvas_scales_its_own_steps_without_a_note(tiny_engine, monkeypatch):
    # the probe's canvas (8 of 32 slots) gets 64 * 8 / 32 = 16 steps, one slot per step at most
    # gives 8: the engine's own arithmetic, not the user's setting, so no note
    monkeypatch.setattr(tiny_engine, "probe_length", lambda *a, **k: (8, {"expected_len": 4.0}))
    res = tiny_engine.infill("def f(x):\n", "\n", tiny_engine.settings(
        max_new_tokens=32, steps=64, block_length=1, length="adaptive"))
    assert res.canvas_len == 8 and res.steps == 8 and "note" not in res.extra
    fixed = tiny_engine.infill("def f(x):\n", "\n", tiny_engine.settings(
        max_new_tokens=32, steps=64, block_length=1, length="fixed"))
    assert "32 denoising steps instead of 64" in fixed.extra["note"]


class _EndHalf:
    """A denoiser whose every masked slot is eos with probability 1/2."""

    def __init__(self, vocab: int, eos: int) -> None:
        self.vocab, self.eos = vocab, eos

    def logits(self, x, attention_mask=None, position_ids=None):
        import math

        import torch

        out = torch.zeros(*x.shape, self.vocab)
        out[..., self.eos] = math.log(self.vocab - 1)  # P(eos) = (V-1) / (2(V-1)) = 1/2
        return out


def test_adaptive_length_counts_eos_once_when_pad_is_eos(tiny_engine):
    # Dream Base: no <|dlm_pad|>, pad_token_id == eos_token_id
    from engine.api import SpecialIds

    class NoPad:
        def __init__(self, tok):
            self.tok = tok

        def token_id(self, text):
            return None if text == "<|dlm_pad|>" else self.tok.token_id(text)

    e = tiny_engine
    vocab = e.tokenizer.vocab_size
    base = Engine(e.folder, NoPad(e.tokenizer), _EndHalf(vocab, e.eos_id),
                  SpecialIds(e.mask_id, e.eos_id, e.eos_id, e.context), e.device)
    assert base.pad_id == base.eos_id
    canvas, info = base.probe_length([5, 6, 7], [8], 32)
    assert info["expected_len"] == pytest.approx(16, abs=0.01)
    assert canvas >= 28  # 1.5 x 16 + 4; counting eos twice gave the 4-slot floor


def test_a_rainbow_pad_cycle_ends_completions_like_the_pad(tiny_model, tmp_path):
    # a model trained with rainbow padding fills unused slots with a cycle of distinct pads
    # after its end token: each one ends the text, counts as "end" in the length probe and
    # stops a request, exactly like the pad
    import json
    import shutil

    from engine.api import SpecialIds

    folder = tmp_path / "rainbow"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**cfg,
                                                               "pad_cycle_token_ids": [40, 41]}))
    e = Engine.load(str(folder), device="cpu", dtype="float32")
    assert e.end_ids == {e.eos_id, e.pad_id, 40, 41}
    assert e.trim([10, 11, 41, 12, e.eos_id]) == [10, 11]
    assert e._stops([10, 40], e.settings(), instruct=False)
    vocab = e.tokenizer.vocab_size
    probe = Engine(folder, e.tokenizer, _EndHalf(vocab, 41), SpecialIds(
        e.mask_id, e.eos_id, e.pad_id, e.context, (40, 41)), e.device)
    # P(41) = 1/2, and eos, pad and 40 share the other half uniformly with every other token
    expected = 32 * (1 - 0.5 - 3 * 0.5 / (vocab - 1))
    assert probe.probe_length([5, 6, 7], [8], 32)[1]["expected_len"] == pytest.approx(
        expected, abs=0.01)
    (folder / "generation_config.json").write_text(json.dumps({**cfg,
                                                               "pad_cycle_token_ids": "40"}))
    with pytest.raises(ModelLoadError, match="pad_cycle_token_ids must be a list of token ids"):
        Engine.load(str(folder), device="cpu", dtype="float32")


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


def test_dual_cache_is_exact_when_nothing_outside_the_window_changed(tiny_engine):
    import torch

    from engine.model import LayerKV

    model = tiny_engine.denoiser.loaded.model
    x = torch.randint(5, 200, (1, 40))
    rows, cols = torch.zeros(6, dtype=torch.long), torch.arange(20, 26)
    cache = [LayerKV(None) for _ in model.model.layers]
    with torch.no_grad():
        full = model(x, select=(rows, cols), cache=cache)
        for layer in cache:
            layer.window = (18, 30)
        windowed = model(x[:, 18:30], select=(rows, cols - 18), cache=cache)
    assert torch.allclose(full, windowed, atol=1e-5)


def test_cached_decoding_reports_passes_and_matches_exact_at_refresh_one(tiny_engine):
    s = tiny_engine.settings(max_new_tokens=12, steps=12, length="fixed", block_length=4)
    exact = tiny_engine.infill("def f(x):\n", "\n    return y\n", s)
    every = tiny_engine.infill("def f(x):\n", "\n    return y\n", s, cache_refresh=1)
    assert every.token_ids == exact.token_ids
    assert exact.extra["forward_passes"] == 12 and exact.extra["first_token_s"] >= 0
    cached = tiny_engine.infill("def f(x):\n", "\n    return y\n", s, cache_refresh=4)
    assert cached.extra["forward_passes"] == 12 and len(cached.token_ids) == 12


def test_parallel_decoding_needs_fewer_passes(tiny_engine):
    s = tiny_engine.settings(max_new_tokens=16, steps=16, length="fixed", block_length=None)
    one = tiny_engine.infill("a = 1\n", "\nb = 2\n", s)
    fast = tiny_engine.infill("a = 1\n", "\nb = 2\n", s, alg="eb", gamma=100.0)
    assert one.extra["forward_passes"] == 16 and fast.extra["forward_passes"] == 1
    assert "note" not in fast.extra and all(o == 0 for o in fast.order)


class _Repeats:
    """A denoiser that writes one token into every slot: a greedy loop."""

    def __init__(self, vocab: int, token: int) -> None:
        self.vocab, self.token = vocab, token

    def logits(self, x, attention_mask=None, position_ids=None):
        import torch

        out = torch.zeros(*x.shape, self.vocab)
        out[..., self.token] = 5.0
        return out


def test_stop_loops_ends_denoising_at_a_loop_and_keeps_one_copy(tiny_engine):
    from engine.api import SpecialIds

    e = tiny_engine
    token = next(i for i in range(e.tokenizer.vocab_size)
                 if len(w := e.tokenizer.decode([i])) >= 2 and w.isalpha())
    word = e.tokenizer.decode([token])
    looping = Engine(e.folder, e.tokenizer, _Repeats(e.tokenizer.vocab_size, token),
                     SpecialIds(e.mask_id, e.eos_id, e.pad_id, e.context), e.device)
    s = looping.settings(max_new_tokens=24, steps=24, alg="entropy", block_length=1,
                         temperature=0.0)
    plain = looping.generate("def f(x):\n", s, raw=True)
    assert plain.completion == word * 24 and plain.extra["forward_passes"] == 24
    cut = looping.generate("def f(x):\n", replace(s, stop_loops=True), raw=True)
    assert cut.completion == word
    # left to right, the fourth copy settles the loop: no pass is spent after it
    assert cut.extra["forward_passes"] == 4
    assert cut.extra["loop_cut_chars"] == 3 * len(word)
