"""engine.pool: infills decoded by worker processes."""

from __future__ import annotations

import pytest

from engine.api import GenerationSettings
from engine.pool import InfillPool, default_workers


def test_workers_answer_every_request_in_order_as_this_process_would(tiny_model, tiny_engine):
    settings = GenerationSettings(max_new_tokens=8, steps=8, length="fixed")
    requests = [(f"def f{i}(x):\n    return x", "\n\nprint(1)\n", settings, ctx)
                for i, ctx in enumerate(["", "# a.py\ny = 2\n", "", "# b.py\nz = 3\n", ""])]
    alone = [tiny_engine.infill(p, s, st, context=c).completion for p, s, st, c in requests]
    assert len(set(alone)) > 1  # the requests differ, so order matters
    with InfillPool(tiny_model, device="cpu", dtype="float32", workers=2) as pool:
        assert list(pool.map(requests)) == alone


def test_a_pool_needs_two_workers(tiny_model):
    with pytest.raises(ValueError, match="2 or more workers"):
        InfillPool(tiny_model, workers=1)


def test_two_workers_by_default_only_where_two_copies_of_the_weights_fit(tiny_engine,
                                                                        monkeypatch):
    import engine.pool

    monkeypatch.setattr(engine.pool, "cpu_cores", lambda: 2)
    assert default_workers(tiny_engine, memory_bytes=1 << 40) == 2
    assert default_workers(tiny_engine, memory_bytes=1024) == 1  # the copies would not fit
    monkeypatch.setattr(engine.pool, "cpu_cores", lambda: 1)
    assert default_workers(tiny_engine, memory_bytes=1 << 40) == 1
