"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.tokenizer import DreamTokenizer
from tests.conftest import TEXT
from tests.gguf_llama import write_tiny_llama_gguf
from training.adapt import AdaptConfig

from .repos import CIRCLES, SHAPES, TESTS


@pytest.fixture
def repo(tmp_path) -> Path:
    """The repository (geometry package, its tests, an ignored generated/ folder)."""
    root = tmp_path / "repo"
    (root / "geometry").mkdir(parents=True)
    (root / "geometry" / "__init__.py").write_text("")
    (root / "geometry" / "shapes.py").write_text(SHAPES)
    (root / "geometry" / "circles.py").write_text(CIRCLES)
    (root / "tests").mkdir()
    (root / "tests" / "test_geometry.py").write_text(TESTS)
    (root / "generated").mkdir()
    (root / "generated" / "junk.py").write_text("def junk():\n    return 1\n")
    (root / ".gitignore").write_text("generated/\n")
    return root


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """(config(out, **overrides) -> AdaptConfig on a tiny llama GGUF base and its tokens, the
    base's tokenizer)."""
    monkeypatch.setenv("UNMASK_CACHE_DIR", str(tmp_path / "cache"))
    src = write_tiny_llama_gguf(tmp_path / "base.gguf", seed=1)
    base = f"gguf:{src}"
    from engine.loading import resolve_model

    tok = DreamTokenizer.from_folder(resolve_model(base))
    data = tmp_path / "tokens"
    data.mkdir()
    ids = np.array(tok.encode(TEXT * 3), dtype=np.uint16)
    ids.tofile(data / "train.bin")
    ids[: len(ids) // 2].tofile(data / "val.bin")

    def config(out: str, **kw) -> AdaptConfig:
        values = dict(out_dir=str(tmp_path / out), data_dir=str(data), base=base, lora_rank=4,
                      lora_alpha=8.0, seq_len=64, batch_size=2, budget_minutes=1e6,
                      max_steps=4, lr=1e-2, warmup_steps=1, anneal_steps=2,
                      checkpoint_minutes=0.0, eval_every=0, eval_batches=1, log_every=1,
                      infill_holes=2, seed=3)
        values.update(kw)
        return AdaptConfig(**values)

    return config, tok
