"""Keys and values kept across requests (engine.reuse)."""

import pytest
import torch

from engine.errors import ConfigError
from engine.model import LayerKV
from engine.reuse import MIN_SHARED, RECOMPUTED, ContextReuse, shared_prefix


def _pass_lengths(model):
    """Record the number of positions every forward pass computes."""
    seen: list[int] = []
    model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    return seen


@pytest.fixture()
def model(tiny_model):
    from engine.loading import load_model

    return load_model(tiny_model, "cpu", "float32").model


def _select(cols):
    return torch.zeros(len(cols), dtype=torch.long), torch.tensor(cols)


def test_shared_prefix_stops_at_the_first_difference_or_the_limit():
    assert shared_prefix([1, 2, 3, 4], [1, 2, 9, 4], 10) == 2
    assert shared_prefix([1, 2, 3], [1, 2, 3, 4], 10) == 3
    assert shared_prefix([1, 2, 3, 4], [1, 2, 3, 4], 2) == 2


def test_a_repeated_request_reuses_its_start_and_gets_the_full_pass_logits(model):
    reuse = ContextReuse(model, torch.device("cpu"))
    x = torch.randint(5, 200, (1, 120))
    sel = _select(range(80, 100))
    first, _, reused = reuse.full_pass(x, sel, 79)
    assert reused == 0
    seen = _pass_lengths(model)
    again, cache, reused = reuse.full_pass(x, sel, 79)
    # the kept keys were computed over exactly this sequence: reusing them is exact
    assert reused == 79 - RECOMPUTED and seen == [120 - reused]
    assert torch.allclose(first, again, atol=1e-5)
    assert all(layer.k.shape[2] == 120 for layer in cache)  # whole keys kept for the next one


def test_only_the_positions_after_the_shared_start_are_computed(model):
    reuse = ContextReuse(model, torch.device("cpu"))
    x = torch.randint(5, 200, (1, 200))
    reuse.full_pass(x, _select([180]), 179)
    typed = x.clone()
    typed[0, 120:] = torch.randint(5, 200, (80,))  # the user typed at position 120
    seen = _pass_lengths(model)
    out, _, reused = reuse.full_pass(typed, _select([180]), 179)
    # the shared start less the tokens nearest the edit, recomputed
    assert reused == 120 - RECOMPUTED and seen == [200 - reused]
    exact = model(typed, select=_select([180]))
    assert out.shape == exact.shape and torch.isfinite(out).all()
    # too little in common: everything is computed again
    other = torch.randint(5, 200, (1, 200))
    other[0, :MIN_SHARED + RECOMPUTED - 1] = typed[0, :MIN_SHARED + RECOMPUTED - 1]
    _, _, reused = reuse.full_pass(other, _select([180]), 179)
    assert reused == 0 and seen[-1] == 200


def test_engine_reuses_the_previous_request_and_reports_it(tiny_engine):
    prefix = "".join(f"x{i} = {i}\n" for i in range(30)) + "def f(x):\n"
    suffix = "\n    return x\n"
    s = tiny_engine.settings(max_new_tokens=8, steps=8, cache_refresh=4, reuse_context=True,
                             length="fixed")
    tiny_engine.infill("y = 0\n" * 30, "\n", s)  # whatever the engine kept before is replaced
    first = tiny_engine.infill(prefix, suffix, s)
    assert first.extra["reused_positions"] == 0
    plain = tiny_engine.infill(prefix, suffix, s, reuse_context=False)
    assert "reused_positions" not in plain.extra and plain.token_ids == first.token_ids
    typed = tiny_engine.infill(prefix + "    ", suffix, s)  # the user typed an indent
    assert typed.extra["reused_positions"] > len(tiny_engine.tokenizer.encode(prefix)) // 2
    # adaptive length: the probe reuses too, and the run then reuses the probe's keys
    probed = tiny_engine.infill(prefix + "    r", suffix, s, length="adaptive")
    assert probed.extra["reused_positions"] > typed.extra["reused_positions"]


def test_reuse_needs_the_context_cache(tiny_engine):
    with pytest.raises(ConfigError, match="--cache-refresh"):
        tiny_engine.settings(reuse_context=True, cache_refresh=0)


def test_windowed_passes_write_their_own_copy_never_the_kept_keys(model):
    """Windowed passes update the cache in place after one copy; the full pass's keys, which
    the next request starts from, stay those of the all-mask canvas."""
    reuse = ContextReuse(model, torch.device("cpu"))
    x = torch.randint(5, 200, (1, 120))
    _, cache, _ = reuse.full_pass(x, _select(range(80, 100)), 79)
    kept = [(k.clone(), v.clone()) for k, v in reuse._kv]
    for layer in cache:
        layer.window = (79, 100)
    with torch.inference_mode():
        for step in range(3):
            x[0, 80 + step] = 7 + step  # a slot decoded per pass
            windowed = model(x[:, 79:100], select=_select(range(0, 21)), cache=cache)
    assert all(torch.equal(k, k0) and torch.equal(v, v0)
               for (k, v), (k0, v0) in zip(reuse._kv, kept))
    # and the in-place cache gives what a fresh copy of the same keys gives
    fresh = [LayerKV((79, 100)) for _ in cache]
    for layer, old in zip(fresh, cache):
        layer.k, layer.v = old.k.clone(), old.v.clone()
    with torch.inference_mode():
        again = model(x[:, 79:100], select=_select(range(0, 21)), cache=fresh)
    assert torch.allclose(windowed, again, atol=1e-5)
