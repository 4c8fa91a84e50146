"""Editor completion settings follow the model's generation_config (block decoding, stops)."""

from __future__ import annotations

import json

from assistant.completion import CompletionService
from assistant.settings import AssistantSettings
from engine.api import Engine
from engine.window import anchored_tail


def test_block_length_comes_from_the_model_and_single_line_stops_at_newline(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**cfg, "block_length": 1,
                                                               "alg": "topk_margin"}))
    service = CompletionService(AssistantSettings())
    service.holder.engine = Engine.load(str(folder), device="cpu", dtype="float32")
    single, multi = service.settings_for("single"), service.settings_for("multi")
    assert single.block_length == multi.block_length == 1
    assert single.stop == ("\n",) and multi.stop == ()
    # blocks are cut to the hole's scope (a single line stops at its newline anyway)
    assert multi.limit_scope and not single.limit_scope
    assert single.alg == "topk_margin"  # the model's default when the user set none
    service.settings = AssistantSettings(alg="origin", temperature=0.3)
    assert (service.settings_for("multi").alg, service.settings_for("multi").temperature) == \
        ("origin", 0.3)
    assert service.settings_for("multi", seed=2).temperature == 0.6  # another candidate samples
    service.settings = AssistantSettings(limit_scope=False)
    assert not service.settings_for("multi").limit_scope
    # the parent's rerank: off as you type whatever the model's default, unless the user asks
    (folder / "generation_config.json").write_text(json.dumps({**cfg, "parent_branches": 2}))
    service.holder.engine = Engine.load(str(folder), device="cpu", dtype="float32")
    service.settings = AssistantSettings()
    assert service.holder.engine.settings().parent_branches == 2
    assert service.settings_for("single").parent_branches == 0
    service.settings = AssistantSettings(parent_branches=3)
    assert service.settings_for("single").parent_branches == 3
    service.holder.engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    assert service.settings_for("multi").block_length is None


def test_single_lines_read_the_latency_window_and_blocks_the_full_one(tiny_model):
    service = CompletionService(AssistantSettings(line_context_tokens=80, prefix_tokens=300,
                                                  suffix_tokens=100))
    engine = service.holder.engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    text = "".join(f"x{i} = f({i})\n" for i in range(300))
    cursor = text.index("x150 =")

    def tokens(s: str) -> int:
        return len(engine.tokenizer.encode(s))

    single, multi = service.window(text, cursor, "single"), service.window(text, cursor, "multi")
    assert tokens(single.prefix) <= 60 and tokens(single.suffix) <= 20
    assert tokens(multi.prefix) > 60 and tokens(single.suffix) < tokens(multi.suffix) <= 100
    # the single-line window starts on the grid (consecutive requests share it:
    # tests/assistant/test_units.py)
    assert single.prefix == anchored_tail(text[:cursor], engine.tokenizer, 60)


def test_the_single_line_canvas_follows_line_canvas_and_blocks_stay_adaptive(tiny_model):
    import pytest

    from engine.errors import ConfigError

    service = CompletionService(AssistantSettings(line_canvas="adaptive"))
    service.holder.engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    assert service.settings_for("single").length == "adaptive"
    assert service.settings_for("multi").length == "adaptive"
    service.settings = AssistantSettings()  # the default: no probe pass for a single line
    assert service.settings_for("single").length == "fixed"
    assert service.settings_for("multi").length == "adaptive"
    with pytest.raises(ConfigError, match="line_canvas must be one of adaptive, fixed"):
        AssistantSettings(line_canvas="probe")
    with pytest.raises(ConfigError, match="parent_branches must be 0 to 8"):
        AssistantSettings(parent_branches=20)


def test_the_repository_benchmark_asks_for_holes_as_the_editors_do(tiny_model):
    # `unmask eval repo` scores what an editor gets: a line hole as a single-line suggestion
    # (the latency window, the line canvas, the fast path), a block as an explicit request
    from cli.train import editor_request
    from training.holes import Hole

    service = CompletionService(AssistantSettings())
    engine = service.holder.engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    lines = [f"    x{i} = f({i})\n" for i in range(400)]
    for kind, mode, end in (("line", "single", 201), ("block", "multi", 203)):
        hole = Hole("m.py", 200, end, kind, "".join(lines[:200]), "".join(lines[200:end]),
                    "".join(lines[end:]))
        prefix, suffix, settings = editor_request(engine, hole)
        window = service.window(hole.prefix + hole.suffix, len(hole.prefix), mode)
        assert (prefix, suffix) == (window.prefix, window.suffix)
        assert len(prefix) < len(hole.prefix) and len(suffix) < len(hole.suffix)  # windowed
        assert settings == service.settings_for(mode)
        assert settings.cache_refresh == AssistantSettings().cache_refresh > 0
    assert editor_request(engine, hole)[2].max_new_tokens == AssistantSettings().max_tokens_block


def test_the_repository_benchmark_can_size_each_canvas_to_the_removed_lines(tiny_model):
    # `unmask eval repo --length oracle`: the ceiling of a right-sized canvas, the same window
    from cli.train import editor_request
    from training.holes import Hole

    engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    lines = [f"    x{i} = f({i})\n" for i in range(40)]
    hole = Hole("m.py", 20, 23, "block", "".join(lines[:20]), "".join(lines[20:23]),
                "".join(lines[23:]))
    prefix, suffix, settings = editor_request(engine, hole, length="oracle")
    n = len(engine.tokenizer.encode(hole.middle))
    assert settings.max_new_tokens == n != AssistantSettings().max_tokens_block
    assert settings.length == "fixed" and settings.limit_scope  # still the editors' request
    assert (prefix, suffix) == editor_request(engine, hole)[:2]
    assert editor_request(engine, hole, length="fixed")[2].length == "fixed"
    assert editor_request(engine, hole)[2].length == "adaptive"


def test_the_syntax_guard_withholds_a_line_that_breaks_a_file_that_could_parse(tiny_model):
    from assistant.requests import answer_check
    from engine.syntax_guard import answer_fits

    exact = dict(repo_context=False, cache_refresh=0, reuse_context=False)
    service = CompletionService(AssistantSettings(**exact, syntax_retries=2))
    engine = service.holder.engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    text = "def f(xs):\n    total = 0\n    \n    return total\n"
    cursor = text.index("    \n") + 4
    window = service.window(text, cursor, "single")
    before, after = text[:window.replace_from], text[cursor:]
    settings = service.settings_for("single")
    answers = [engine.infill(window.prefix, window.suffix, s).completion.split("\n")[0]
               for s in [settings] + engine.alternatives(settings)]
    fits = [answer_fits(before, a, after) for a in answers]
    assert not fits[0]  # the random model's first line breaks the file: the guard has work
    got = service.infill(service.new_job("a.py"), window, "single", None, text)
    assert len(answers) == 3 and got == next((a for a, ok in zip(answers, fits) if ok), "")
    assert service.stats.rejected == (not any(fits))
    # the default tries no other decoding: the breaking answer is withheld at once
    service.settings, service.cache = AssistantSettings(**exact), type(service.cache)()
    assert service.settings_for("single").retries == 0
    assert service.infill(service.new_job("a.py"), window, "single", None, text) == ""

    # without the whole file, or with the guard off, the first answer is shown as before
    assert answer_check(AssistantSettings(**exact), before, after, "multi") is None
    service.cache = type(service.cache)()
    assert service.infill(service.new_job("a.py"), window, "single", None, None) == answers[0]
    service.settings = AssistantSettings(**exact, syntax_guard=False)
    service.cache = type(service.cache)()
    assert service.infill(service.new_job("a.py"), window, "single", None, text) == answers[0]
    # a file broken elsewhere cannot judge a line's syntax, only whether it copies the next one
    broken = answer_check(AssistantSettings(**exact), before, after + "if (:\n", "single")
    assert broken("    for = 0\n") and not broken("    return total\n")
    fine = answer_check(AssistantSettings(**exact), before, after, "single")  # from the line start
    assert fine("    total = 1\n") and not fine("    for = 0\n")
    assert not fine("    return total\n")
