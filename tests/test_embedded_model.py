"""The shipped default model: an adapter over the pinned base package, found and loadable
offline, in the issue's size budget, and it writes code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from engine.api import Engine, GenerationSettings
from engine.loading import DEFAULT_MODEL, REPO_MODELS, list_models

ROOT = Path(__file__).resolve().parent.parent


def test_default_model_is_an_adapter_in_budget_over_the_pinned_base():
    folder = REPO_MODELS / DEFAULT_MODEL
    adapter = json.loads((folder / "adapter_config.json").read_text())
    # the base comes from the registry package `make` installs, never from the repository
    package = adapter["base_model_name_or_path"].removeprefix("gguf:").split("/")[0]
    pin = re.search(r"^BASE_PIN \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert pin.split("==")[0] == package.replace("_", "-")
    assert not (folder / "config.json").exists() and not list(folder.glob("*.gguf"))
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 40 * 2**20
    card = (folder / "README.md").read_text()
    assert pin in card and "Apache-2.0" in card  # the base's origin and licence
    assert DEFAULT_MODEL in [name for name, _ in list_models()]


def test_default_model_loads_without_naming_it_and_infills():
    eng = Engine.load(device="cpu")
    assert eng.name == DEFAULT_MODEL
    res = eng.infill("def add(a, b):\n", "\n\nprint(add(1, 2))\n",
                     GenerationSettings(max_new_tokens=16, steps=16))
    assert res.canvas_len <= 16 and all(o >= 0 for o in res.order)
    generation = json.loads((REPO_MODELS / DEFAULT_MODEL / "generation_config.json").read_text())
    assert eng.pad_id == generation["pad_token_id"] == eng.tokenizer.token_id("<|endoftext|>")
    assert eng.mask_id == eng.tokenizer.token_id("<|mask|>")
    # trained with rainbow padding: one end token, then a cycle of pads that each end the text
    assert len(generation["pad_cycle_token_ids"]) == 7
    assert set(generation["pad_cycle_token_ids"]) < eng.end_ids
    # it writes the body: the sum of its two arguments, with no special tokens left in it
    assert "return" in res.completion and "a + b" in res.completion.replace("b + a", "a + b")
    assert not any(t in res.completion for t in ("<|mask|>", "<|endoftext|>"))


def test_models_command_lists_default():
    r = subprocess.run([sys.executable, "-m", "cli", "models"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and f"{DEFAULT_MODEL}  (default)" in r.stdout
