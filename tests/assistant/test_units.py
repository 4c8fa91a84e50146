"""Unit tests of the editor pieces that were only exercised end to end: body cutting, windows,
the suggestion cache and the single/multi-line decision."""

from __future__ import annotations

import pytest

from assistant.completion import SuggestionCache
from assistant.edits import cut_body
from assistant.syntax import completion_mode
from engine.window import anchored_tail, build_infill, fit_infill, tail_by_tokens


class CharTokenizer:
    """One token per character: token budgets become character counts."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def test_cut_body_stops_at_the_first_line_not_indented_under_the_def():
    text = "    x = 1\n    return x\n\ndef other():\n    pass\n"
    assert cut_body(text, "") == "    x = 1\n    return x\n"
    assert cut_body("        y = 2\n    z = 3\n", "    ") == "        y = 2\n"


def test_cut_body_indents_an_unindented_body_one_level():
    assert cut_body("return 1\n", "") == "    return 1\n"
    assert cut_body("return 1\n", "    ") == "        return 1\n"
    assert cut_body("\n\n", "") == ""


def test_build_infill_keeps_whole_lines_nearest_the_cursor():
    text = "aaaa\nbbbb\ncccc\nx = \ndddd\neeee\n"
    w = build_infill(text, text.index("x = ") + 4, CharTokenizer(), prefix_tokens=14,
                     suffix_tokens=6)
    assert w.prefix == "bbbb\ncccc\nx = " and w.suffix == "\ndddd\n"
    assert w.replace_from == text.index("x = ") + 4


def test_build_infill_backs_up_to_the_line_start_in_indentation():
    text = "def f():\n    \n"
    w = build_infill(text, len("def f():\n    "), CharTokenizer(), 100, 100)
    assert w.prefix == "def f():\n" and w.replace_from == len("def f():\n")


def test_a_stable_start_stays_put_while_the_user_types_down_a_long_file():
    tok = CharTokenizer()
    file = "".join(f"line_{i:03d} = {i}\n" for i in range(200))  # 15 characters a line
    starts, tight_starts = set(), set()
    for cursor in range(1500, 1560):  # typing four lines
        text = file[:cursor]
        w = anchored_tail(text, tok, 120, grid=60)
        assert len(w) <= 120 and text.endswith(w) and w.startswith("line_")  # whole lines
        assert len(w) >= 120 - 60 - 2 * 15  # the grid's width, and whole lines at both ends
        starts.add(cursor - len(w))
        tight_starts.add(cursor - len(tail_by_tokens(text, tok, 120)))
    assert len(tight_starts) >= 4 and len(starts) <= 2
    # the editors' windows use it on request
    w = build_infill(file, 1500, tok, 120, 10, stable_start=True)
    assert w.prefix == anchored_tail(file[:1500], tok, 120) and w.suffix == file[1500:1510]


def test_fit_infill_leaves_fitting_text_alone_and_gives_the_suffix_a_quarter():
    tok = CharTokenizer()
    assert fit_infill("ab\n", "cd\n", tok, 10) == ("ab\n", "cd\n", None)
    prefix, suffix = "p\n" * 50, "s\n" * 50
    pre, suf, note = fit_infill(prefix, suffix, tok, 40)
    assert len(pre) + len(suf) <= 40 and len(suf) == 10 and prefix.endswith(pre)
    assert suffix.startswith(suf) and "nearest the hole" in note
    pre, suf, _ = fit_infill(prefix, "s\n", tok, 40)  # a short suffix is kept whole
    assert suf == "s\n" and len(pre) == 38
    pre, suf, _ = fit_infill("y" * 100, "z" * 100, tok, 40)  # one huge line: tokens, not lines
    assert pre == "y" * 30 and suf == "z" * 10
    with pytest.raises(ValueError, match="budget"):  # a negative room fails, never loops
        fit_infill(prefix, suffix, tok, -3)


def test_suggestion_cache_serves_the_rest_when_the_user_types_its_start():
    cache = SuggestionCache(size=2)
    cache.put("x = ", "\n", "compute(a, b)")
    assert cache.get("x = ", "\n") == "compute(a, b)"
    assert cache.get("x = comp", "\n") == "ute(a, b)"
    assert cache.get("x = cx", "\n") is None  # typed something else
    assert cache.get("x = ", "\nmore") is None  # the suffix changed
    assert cache.get("x = compute(a, b)", "\n") is None  # nothing left to suggest
    cache.put("a", "", "1")
    cache.put("b", "", "2")
    assert cache.get("x = ", "\n") is None  # evicted, least recent first


def test_completion_mode_multi_only_on_blank_lines_that_open_a_block_or_an_empty_body():
    src = "def f(x):\n    \n\nfor i in range(3):\n\ny = f(\n"
    assert completion_mode(src, 1, 4) == "multi"  # empty body of f
    assert completion_mode(src, 4, 0) == "multi"  # after `for ...:`
    assert completion_mode(src, 5, 6) == "single"  # inside a line
    assert completion_mode("x = 1\n\n", 1, 0) == "single"  # a blank line opening nothing


def test_repo_contexts_index_in_the_background_and_follow_saves(tmp_path):
    from assistant.repo_context import RepoContexts

    (tmp_path / "helpers.py").write_text("def parse_config(path):\n    return load_json(path)\n")
    (tmp_path / "main.py").write_text("config = parse_config('a.json')\n")
    repo = RepoContexts()
    tok = CharTokenizer()
    # the buffer's lines above the request's window (the default retrieval shows those)
    above = "def load(path):\n    config = parse_config(path)\n    return config\n"
    prefix = "config = parse_config("
    document = (above + prefix, "")
    main = tmp_path / "main.py"
    assert repo.context(main, prefix, "", tok, 500, document) == ""
    repo.start([tmp_path]).result()
    ctx = repo.context(main, prefix, "", tok, 500, document)
    assert ctx == "# main.py\n" + above
    assert repo.context(tmp_path.parent / "elsewhere.py", prefix, "", tok, 500,
                        document) == ""
    (tmp_path / "later.py").write_text("def parse_config_later():\n    pass\n")
    repo.saved(tmp_path / "later.py").result()
    (index,) = repo.indexes.values()  # other files' chunks (--retrieval bm25) see the save
    assert "later.py" in index.files and any(c.path == "later.py" for c in index.chunks)
