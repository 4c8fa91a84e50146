"""Token healing at the canvas boundaries: where the cuts move, how completions move back, and
that tokenizers which keep a newline apart are left exactly as they were."""

from __future__ import annotations

import pytest
import torch

from engine.healing import NO_HEALING, Healing, merges_newlines, plan_healing
from engine.tokenizer import DreamTokenizer
from engine.window import infill_ids
from tests.conftest import make_tiny_folder
from tests.gguf_llama import write_tiny_llama_gguf

PREFIX = "def f(x):\n    y = 1\n"
SUFFIX = "    return y\n"


@pytest.fixture(scope="module")
def merging(tmp_path_factory):
    from engine.gguf_base import convert_gguf

    root = tmp_path_factory.mktemp("heal")
    folder = convert_gguf(write_tiny_llama_gguf(root / "t.gguf"), root / "m", torch.float32)
    return DreamTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    return DreamTokenizer.from_folder(make_tiny_folder(tmp_path_factory.mktemp("sep")))


def test_detects_which_tokenizers_merge_a_newline_with_indentation(merging, separate):
    assert merges_newlines(merging)
    assert not merges_newlines(separate)


def test_whole_line_hole_moves_both_cuts(merging):
    heal = plan_healing(merging, PREFIX, SUFFIX)
    assert heal == Healing(cut="\n", newline_to_suffix=True)
    prefix, suffix = heal.prompt(PREFIX, SUFFIX)
    assert prefix == "def f(x):\n    y = 1" and suffix == "\n    return y\n"
    # the suffix now starts with the natural newline+indentation token
    assert merging.token_texts(merging.encode(suffix))[0] == "\n   "
    # the canvas writes "\n    z = y" (newline first, no final newline): moved back
    assert heal.completion("\n    z = y") == "    z = y\n"
    assert heal.middle("    z = y\n") == "\n    z = y"
    assert heal.completion(heal.middle("    z = y\n")) == "    z = y\n"


def test_cursor_after_typed_indentation(merging):
    heal = plan_healing(merging, PREFIX + "    ", "\n    return y\n")
    assert heal == Healing(cut="\n    ", newline_to_suffix=False)
    assert heal.completion("\n    z = 2") == "z = 2"
    assert heal.completion("\n        z = 2") == "    z = 2"  # deeper than the user typed
    assert heal.completion("\n  z") == "  z"  # other indentation: only the newline is dropped
    assert heal.completion("") == ""


def test_partial_canvas_does_not_gain_the_final_newline(merging):
    heal = plan_healing(merging, PREFIX, SUFFIX)
    assert heal.completion("\n    z = f(", final=False) == "    z = f("  # no early "\n" stop
    assert heal.completion("\n    z = f(", final=True) == "    z = f(\n"


def test_blank_lines_the_canvas_guesses_at_the_cursor_are_dropped(merging):
    # the model cannot see whether the user typed a blank line: the newlines are the user's
    heal = plan_healing(merging, PREFIX, SUFFIX)
    assert heal.completion("\n\n    z = y") == "    z = y\n"
    assert heal.completion("\n\n", final=False) == ""  # no "\n" in it: no single-line stop yet
    typed = plan_healing(merging, PREFIX + "    ", "\n    return y\n")
    assert typed.completion("\n\n\n    z = 2\n\n    w = 3") == "z = 2\n\n    w = 3"
    blank = plan_healing(merging, PREFIX + "\n", SUFFIX)  # the user's own blank line
    assert blank.completion("\n    z = y") == "    z = y\n"
    assert heal.completion("z") == "z\n"  # no newline in the canvas's lead: nothing to drop


def test_mid_line_cursor_is_not_healed(merging):
    assert plan_healing(merging, "x = foo(", ")\n") is NO_HEALING
    assert plan_healing(merging, "x = 1  ", "\n") is NO_HEALING


def test_non_merging_tokenizer_builds_exactly_the_old_prompt(separate):
    assert plan_healing(separate, PREFIX, SUFFIX) is NO_HEALING
    pre, suf, _ = infill_ids(separate, PREFIX, SUFFIX, "", 200)
    assert pre == separate.encode(PREFIX) and suf == separate.encode(SUFFIX)


def test_infill_ids_heals_for_a_merging_tokenizer(merging):
    pre, suf, _ = infill_ids(merging, PREFIX, SUFFIX, "", 200)
    assert merging.decode(pre) == PREFIX[:-1]
    assert merging.decode(suf) == "\n" + SUFFIX
    assert merging.token_texts(pre)[-1] != "\n"


def test_engine_completion_is_the_healed_canvas(tmp_path, monkeypatch):
    from engine.api import Engine

    monkeypatch.setenv("UNMASK_CACHE_DIR", str(tmp_path / "cache"))
    src = write_tiny_llama_gguf(tmp_path / "t.gguf", seed=3)
    engine = Engine.load(f"gguf:{src}", device="cpu", dtype="float32")
    res = engine.infill(PREFIX, SUFFIX, max_new_tokens=8, steps=8, length="fixed")
    heal = plan_healing(engine.tokenizer, PREFIX, SUFFIX)
    assert heal.cut == "\n"
    raw = engine.tokenizer.decode(engine.trim(res.token_ids))
    assert res.completion == heal.completion(raw)
    pre, suf, _ = engine.infill_prompt(PREFIX, SUFFIX, 8)
    assert engine.tokenizer.decode(suf) == "\n" + SUFFIX
