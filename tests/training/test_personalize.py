"""Personalization on a tiny repository made in the test: retrieval, the hole miner, the
sandboxed test runs, the fine-tuning loop (resume, outputs) and the bad inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError
from engine.repo import RepoIndex, python_files

from .repos import SHAPES, TESTS, tree_hash

def test_files_honour_gitignore_and_exclude_and_refuse_bad_input(repo, tmp_path):
    files = [p.as_posix() for p in python_files(repo, ["geometry/circles.py"])]
    assert files == ["geometry/__init__.py", "geometry/shapes.py", "tests/test_geometry.py"]
    assert [p.as_posix() for p in python_files(repo, ["tests/*"])][-1] == "geometry/shapes.py"
    with pytest.raises(ConfigError, match="matches no Python file"):
        python_files(repo, ["nothing/*.py"])
    with pytest.raises(ConfigError, match="not a folder"):
        python_files(repo / "geometry" / "shapes.py")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no Python files"):
        python_files(tmp_path / "empty")


def test_excluded_files_are_never_read(repo, monkeypatch):
    read = []
    original = Path.read_text

    def spy(self, *a, **k):
        read.append(self.name)
        return original(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", spy)
    RepoIndex(repo, ["geometry/circles.py"])
    assert "circles.py" not in read and "shapes.py" in read


def test_chunk_context_names_paths_and_never_returns_the_edited_file(repo, tiny_engine):
    index = RepoIndex(repo, retrieval="bm25")
    text = SHAPES
    cut = text.index("    result = side * side")
    prefix, suffix = text[:cut], text[cut:].split("\n", 1)[1]
    ctx = index.context(prefix, suffix, tiny_engine.tokenizer, 400, path="geometry/shapes.py")
    assert ctx.startswith("# ") and "# geometry/circles.py\n" in ctx
    assert "# geometry/shapes.py" not in ctx
    # without a path (batch requests) the saved copy is recognised by the text around the hole
    ctx = index.context(prefix, suffix, tiny_engine.tokenizer, 400)
    assert "# geometry/shapes.py" not in ctx
    assert index.context(prefix, suffix, tiny_engine.tokenizer, 0) == ""


def test_symbol_context_shows_stubs_of_what_the_code_around_the_hole_uses(repo, tiny_engine):
    tok = tiny_engine.tokenizer
    cut = TESTS.index("    assert perimeter_of_square(2)")
    prefix, suffix = TESTS[:cut], TESTS[cut:].split("\n", 1)[1]
    index = RepoIndex(repo, retrieval="symbols")
    ctx = index.context(prefix, suffix, tok, 400, path="tests/test_geometry.py")
    # the nearest use first (area_of_square, just above), then the suffix's (area_of_circle)
    assert ctx == ('# geometry/shapes.py\ndef area_of_square(side):\n'
                   '    """Area of a square."""\n    ...\n'
                   "# geometry/circles.py\ndef area_of_circle(radius):\n    ...\n")
    both = RepoIndex(repo, retrieval="both").context(prefix, suffix, tok, 400,
                                                     path="tests/test_geometry.py")
    assert "result = side * side" in both and both.endswith(ctx)  # chunks, then the stubs
    first = ctx[:ctx.index("# geometry/circles.py")]
    budget = 2 * len(tok.encode(first))  # "both" gives stubs half of it: room for the first
    small = RepoIndex(repo, retrieval="both").context(prefix, suffix, tok, budget,
                                                      path="tests/test_geometry.py")
    assert small.endswith(first) and len(tok.encode(small)) <= budget
    with pytest.raises(ConfigError, match="retrieval must be one of bm25, symbols, both"):
        RepoIndex(repo, retrieval="dense")


def test_file_context_shows_the_edited_files_unseen_lines_that_continue_the_same_lead(
        repo, tiny_engine):
    from engine.window import build_infill, outside_window

    tok = tiny_engine.tokenizer
    twin = ("def lookup_info(func, cache, key, info):\n    hits = misses = 0\n\n"
            "    def wrapper(*args, **kwargs):\n        nonlocal hits, misses\n"
            "        k = key(*args, **kwargs)\n        return cache[k]\n\n")
    filler = "".join(f"VALUE_{i} = {i} * {i}\n" for i in range(60))
    text = twin + filler + twin.replace("lookup_info", "locked_info")
    offset = text.rindex("        nonlocal")  # the hole: this line, removed
    before, after = text[:offset], text[offset:].split("\n", 1)[1]
    window = build_infill(before + after, offset, tok, 40, 30)
    assert "lookup_info" not in window.prefix  # the twin above is out of the window's sight
    unseen = outside_window(before, after, window.prefix, window.suffix)
    assert unseen[0] + window.prefix + window.suffix + unseen[1] == before + after
    document = (before, after)
    file_ctx = RepoIndex(repo, retrieval="file").context(
        window.prefix, window.suffix, tok, 4000, path="pkg/cached.py", document=document)
    # the twin's lead (its signature down to `def wrapper`) is matched, its next lines shown
    assert file_ctx.startswith("# pkg/cached.py\n") and "lookup_info" in file_ctx
    assert "        nonlocal hits, misses\n        k = key(*args, **kwargs)\n" in file_ctx
    assert "VALUE_59" not in file_ctx  # nor the window's own lines: only what it leaves out
    both = RepoIndex(repo, retrieval="file+bm25").context(
        window.prefix, window.suffix, tok, 8000, path="pkg/cached.py", document=document)
    assert both.endswith(file_ctx) and both.startswith("# geometry/")  # other files first
    # other files' chunks never come from there, and no document gives no file context
    assert "pkg/cached.py" not in RepoIndex(repo, retrieval="bm25").context(
        window.prefix, window.suffix, tok, 4000, path="pkg/cached.py", document=document)
    assert RepoIndex(repo, retrieval="file").context(
        window.prefix, window.suffix, tok, 4000, path="pkg/cached.py") == ""
    assert outside_window("abc", "def", "zz", "d") == ("", "ef")  # not a cut: nothing


def test_file_context_reuses_the_unseen_windows_until_the_text_outside_changes(repo, tiny_engine):
    from engine.repo import unseen_windows

    tok, index = tiny_engine.tokenizer, RepoIndex(repo, retrieval="file")
    above = "".join(f"def helper_{i}(x):\n    return x + {i}\n\n" for i in range(40))
    prefix, suffix = "def helper_7(x):\n", "\n"

    def ask(unseen_above: str) -> str:
        return index.context(prefix, suffix, tok, 4000, path="pkg/h.py",
                             document=(unseen_above + prefix, suffix))

    unseen_windows.cache_clear()
    first = ask(above)
    again = ask(above)  # the next keystroke: the same text out of the window
    assert again == first and "return x + 7" in first
    assert unseen_windows.cache_info().hits == 1 and unseen_windows.cache_info().misses == 1
    edited = ask(above.replace("return x + 7", "return x * 7"))  # an edit above the window
    assert "return x * 7" in edited and "return x + 7" not in edited  # never a stale index
    assert unseen_windows.cache_info().misses == 2


def test_symbols_are_signatures_under_their_class_and_skip_files_that_do_not_parse():
    from engine.symbols import file_symbols

    text = ('class Box(Base):\n    """A box."""\n\n    def __init__(self, w,\n'
            '                 h):\n        self.w = w\n\n    def area(self):\n'
            '        """Its area.\n\n        More."""\n        return self.w * self.h\n')
    syms = {s.name: s.text for s in file_symbols("box.py", text)}
    assert syms == {"Box": "class Box(Base):\n    def __init__(self, w,\n                 h):\n"
                           "        ...\n",
                    "area": 'class Box(Base):\n    def area(self):\n        """Its area."""\n'
                            "        ...\n"}
    assert file_symbols("broken.py", "def f(:\n") == []


def test_miner_keeps_holes_the_tests_need_and_never_touches_the_tree(repo):
    from engine.sandbox import RepoSandbox
    from training.holes import candidate_holes, verify_holes

    before = tree_hash(repo)
    holes = candidate_holes("geometry/shapes.py", SHAPES, ("line",))
    assert [h.middle.strip() for h in holes] == ["result = side * side", "return result",
                                                 "total = 4 * side", "return total"]
    assert all(h.prefix + h.middle + h.suffix == SHAPES for h in holes)
    with RepoSandbox(repo, timeout_s=60) as sandbox:
        kept = verify_holes(sandbox, holes, 10)
        assert len(kept) == 4  # every one of these lines is needed by the tests
        assert sandbox.run({"geometry/shapes.py": holes[0].filled("result = side + side\n")
                            }).passed is False
        assert sandbox.run({"geometry/shapes.py": holes[0].filled(
            "    result = side * side\n")}).passed
    assert tree_hash(repo) == before


def test_a_hanging_or_failing_suite_is_reported_not_waited_for(repo):
    from engine.sandbox import RepoSandbox
    from training.holes import verify_holes

    (repo / "tests" / "test_hang.py").write_text("def test_hang():\n    while True:\n        pass\n")
    with RepoSandbox(repo, timeout_s=3) as sandbox:
        assert sandbox.run().status == "timeout"
        with pytest.raises(ConfigError, match="does not pass on the unmodified repository"):
            verify_holes(sandbox, [], 1)


def test_personalize_writes_a_loadable_model_and_resumes(repo, tiny_model, tmp_path):
    from engine.api import Engine
    from training.personalize import PersonalizeConfig, personalize

    out = tmp_path / "personal"
    cfg = PersonalizeConfig(repo=str(repo), out=str(out), base=str(tiny_model), minutes=0.04,
                            batch_size=2, seq_len=192, checkpoint_seconds=0.0)
    seen = []
    first = personalize(cfg, seen.append)
    assert first["steps"] >= 1 and seen and seen[-1]["step"] == first["steps"]
    # one of the four files is kept out to validate on
    assert first["files"] == 3 and len(first["validation"]["files"]) == 1
    assert set(first["holes"]) == {"line", "block", "body"}
    eng = Engine.load(str(out), device="cpu", dtype="float32")
    assert eng.infill("def f(x):\n", "\n", max_new_tokens=4, steps=2).canvas_len <= 4
    assert json.loads((out / "personalize.json").read_text())["steps"] == first["steps"]
    more = personalize(PersonalizeConfig(**{**cfg.__dict__, "minutes": 0.08}))
    assert more["steps"] > first["steps"]  # resumed from the checkpoint, not restarted
    assert more["minutes"] >= 0.08


def test_a_checkpoint_resumes_only_into_a_run_from_the_same_weights(repo, tiny_model, tmp_path):
    # an --out reused after the base changed (a newer model of the same shape and file size)
    # must not quietly go on training the old run's weights on top of the new ones
    from tests.conftest import make_tiny_folder
    from training.personalize import PersonalizeConfig, personalize
    from training.pretrain import origin_of

    other = make_tiny_folder(tmp_path / "other", seed=1)
    sizes = [(f / "model.safetensors").stat().st_size for f in (tiny_model, other)]
    assert sizes[0] == sizes[1] and origin_of(other) != origin_of(tiny_model)
    assert origin_of(tiny_model, lora_rank=4) != origin_of(tiny_model, lora_rank=8)
    cfg = PersonalizeConfig(repo=str(repo), out=str(tmp_path / "personal"), base=str(tiny_model),
                            minutes=0.02, batch_size=2, seq_len=192, lora_rank=4,
                            checkpoint_seconds=0.0)
    first = personalize(cfg)
    for change in ({"base": str(other)}, {"lora_rank": 8}):
        with pytest.raises(ConfigError, match="started from other weights or settings"):
            personalize(PersonalizeConfig(**{**cfg.__dict__, **change}))
    again = personalize(PersonalizeConfig(**{**cfg.__dict__, "minutes": 0.04}))
    assert again["steps"] > first["steps"]  # the same origin still resumes


def test_cli_personalize_and_infill_with_repo_context(repo, tmp_path):
    from tests.conftest import make_tiny_folder

    tiny_model = make_tiny_folder(tmp_path / "wide", max_position_embeddings=2048)

    def unmask(*args):
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                              text=True, timeout=300)

    bad = unmask("train", "personalize", "--repo", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o"))
    assert bad.returncode == 2 and "not a folder" in bad.stderr and "Traceback" not in bad.stderr
    bad = unmask("train", "personalize", "--repo", str(repo), "--out", str(tmp_path / "o"),
                 "--lr", "0")
    assert bad.returncode == 2 and "--lr must be positive" in bad.stderr
    bad = unmask("train", "personalize", "--repo", str(repo), "--out", str(tmp_path / "o"),
                 "--replay", "1")
    assert bad.returncode == 2 and "--replay is a share" in bad.stderr
    bad = unmask("train", "personalize", "--repo", str(repo), "--out", str(tmp_path / "o"),
                 "--base", str(tiny_model), "--parent-minutes", "5")  # no adapter: no parent
    assert bad.returncode == 2 and "--parent-minutes needs an adapted model" in bad.stderr
    assert not (tmp_path / "o").exists()
    bad = unmask("infill", "--model", str(tiny_model), "--repo", str(repo), "--exclude", "zz.py",
                 "--prefix", "x")
    assert bad.returncode == 2 and "matches no Python file" in bad.stderr
    common = ["infill", "--model", str(tiny_model), "--prefix-file",
              str(repo / "geometry" / "circles.py"), "--max-new-tokens", "4", "--steps", "2",
              "--json"]
    plain = json.loads(unmask(*common).stdout)
    with_repo = json.loads(unmask(*common, "--repo", str(repo), "--retrieval", "bm25").stdout)
    assert with_repo["prompt_tokens"] > plain["prompt_tokens"]  # shapes.py came in as context
    # the default (file) shows the file's own unseen lines: the model sees all of this one
    assert json.loads(unmask(*common, "--repo", str(repo)).stdout)["prompt_tokens"] == \
        plain["prompt_tokens"]


def test_cli_eval_repo_scores_base_and_personalized_with_and_without_context(repo, tiny_model,
                                                                             tmp_path):
    import os

    env = {**os.environ, "UNMASK_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    before = tree_hash(repo)
    args = [sys.executable, "-m", "cli", "eval", "repo", "--repo", str(repo), "--exclude",
            "geometry/shapes.py", "--model", str(tiny_model), "--personalized", str(tiny_model),
            "--holes", "4", "--dtype", "float32", "--workers", "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    def scores(stderr: str) -> dict:  # each row's scores, less the minutes it took
        rows = json.loads(stderr.strip().splitlines()[-1])
        assert all(row.pop("minutes") >= 0 for row in rows.values())
        return rows

    rows = scores(r.stderr)
    assert list(rows) == ["base", "base + context", "personalized", "personalized + context"]
    assert rows["base"]["line"]["n"] == 4 and 0 <= rows["base"]["line"]["pass@1"] <= 1
    assert rows["base"] == rows["personalized"]  # the same model twice: the same scores
    assert "lines found in" in r.stdout and "other files" in r.stdout  # the sources table
    assert "context showed them" in r.stdout  # and whether the context held the answer
    # the second model's answers were the first's: each verdict was shared, not run again
    distinct, scored = map(int, re.search(r"(\d+) distinct answers of (\d+) scored",
                                          r.stderr).groups())
    assert scored == 4 * 6 and 0 < distinct <= scored // 2
    reused, asked = map(int, re.search(r"(\d+) of (\d+) answers reused", r.stderr).groups())
    assert asked // 2 <= reused < asked  # the second model's answers were the first's
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert f"{asked} of {asked} answers reused" in again.stderr
    assert scores(again.stderr) == rows
    # decoded again in this process instead of two workers: the same answers, so scores
    fresh = subprocess.run(args + ["--fresh", "--workers", "1"], capture_output=True,
                           text=True, timeout=600, env=env)
    assert "reused" not in fresh.stderr
    assert scores(fresh.stderr) == rows
    assert tree_hash(repo) == before
    assert list((tmp_path / "cache" / "holes").glob("*.jsonl"))  # verified holes are cached
    (repo / "tests" / "test_geometry.py").write_text(TESTS + "\n\ndef test_broken():\n"
                                                     "    assert False\n")
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode != 0 and "does not pass on the unmodified repository" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(args + ["--parent-branches", "9"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 2 and "--parent-branches must be 0 to 8" in r.stderr
    r = subprocess.run(args + ["--workers", "0"], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 2 and "--workers 0: give 1 or more" in r.stderr


def test_holes_are_grouped_by_where_their_removed_lines_already_occur():
    from training.holes import Hole
    from training.repo_eval import Benchmark, by_source

    def hole(middle: str, kind: str = "line") -> Hole:
        return Hole("a.py", 1, 2, kind, "def f(x):\n    y = x + 1\n", middle,
                    "    return y\n")

    bench = Benchmark(Path("."), [], ["a.py"], {}, frozenset({"return wrapper"}))
    assert bench.source(hole("    return wrapper\n")) == "other files"
    assert bench.source(hole("    y = x + 1\n")) == "same file"
    # a block is found only where every one of its lines is
    assert bench.source(hole("    return wrapper\n    y = x + 1\n", "block")) == "nowhere"
    assert bench.source(hole("    z = 2\n")) == "nowhere"
    records = [{"config": c, "kind": k, "source": src, "passed": p}
               for c in ("base", "tuned")
               for k, src, p in (("block", "nowhere", False), ("line", "same file", True),
                                 ("line", "other files", c == "tuned"),
                                 ("line", "other files", False))]
    assert by_source(records) == {("line", "other files"): {"n": 2, "base": 0, "tuned": 1},
                                  ("line", "same file"): {"n": 1, "base": 1, "tuned": 1},
                                  ("block", "nowhere"): {"n": 1, "base": 0, "tuned": 0}}


def test_holes_are_grouped_by_whether_the_context_showed_their_removed_lines():
    from training.repo_eval import by_shown

    records = [{"config": c, "kind": k, "shown": None if c == "base" else shown, "passed": p}
               for c in ("base", "base + context", "tuned + context")
               for k, shown, p in (("line", True, True), ("line", True, c == "tuned + context"),
                                   ("line", False, False), ("block", False, c == "base"))]
    # the configurations without context (shown None) are left out, and shown holes come first
    assert list(by_shown(records).items()) == [
        (("line", True), {"n": 2, "base + context": 1, "tuned + context": 2}),
        (("line", False), {"n": 1, "base + context": 0, "tuned + context": 0}),
        (("block", False), {"n": 1, "base + context": 0, "tuned + context": 0})]


def test_lora_personalization_writes_a_peft_adapter_that_loads_on_its_base(repo, tiny_model,
                                                                          tmp_path, caplog):
    import torch
    from safetensors.torch import load_file

    from engine.api import Engine
    from engine.loading import load_model
    from training.personalize import PersonalizeConfig, personalize

    out = tmp_path / "adapter"
    # every file trains (no validation): at this rate a tiny model scores worse on unseen files,
    # and the best point, the base, would be written
    summary = personalize(PersonalizeConfig(repo=str(repo), out=str(out), base=str(tiny_model),
                                            minutes=0.03, batch_size=2, seq_len=192,
                                            lora_rank=4, lr=5e-2, validation=0.0))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    assert cfg["base_model_name_or_path"] == str(tiny_model)
    names = list(load_file(str(out / "adapter_model.safetensors")))
    assert all(n.startswith("base_model.model.model.layers.") for n in names)
    assert summary["trained_parameters"] < 0.5 * sum(
        p.numel() for p in load_model(tiny_model, "cpu", "float32").model.parameters())
    # the resumable checkpoint holds the adapter only (the run rebuilds the frozen base) ...
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert saved and all("lora" in n for n in saved)
    assert sum(v.numel() for v in saved.values()) == summary["trained_parameters"]
    # ... and a longer budget resumes from it
    caplog.set_level("INFO", logger="training.personalize")
    again = personalize(PersonalizeConfig(repo=str(repo), out=str(out), base=str(tiny_model),
                                          minutes=0.06, batch_size=2, seq_len=192,
                                          lora_rank=4, lr=5e-2, validation=0.0))
    assert again["steps"] > summary["steps"]
    assert f"at step {summary['steps']}" in caplog.text
    base = load_model(tiny_model, "cpu", "float32").model
    merged = load_model(out, "cpu", "float32").model
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q], merged.state_dict()[q])  # the update is in
    eng = Engine.load(str(out), device="cpu", dtype="float32")
    assert eng.tokenizer.token_id("<|mask|>") == eng.mask_id and eng.defaults
    assert eng.infill("def f(x):\n", "\n", max_new_tokens=4, steps=2).canvas_len <= 4


def test_general_files_for_replay_are_filtered_decontaminated_training_split_code():
    from training.corpus import general_files, is_validation, reject_reason

    files = general_files(12, seed=3)
    assert len(files) == 12 and files == general_files(12, seed=3)  # fixed per seed
    assert files != general_files(12, seed=4)
    assert all(p.startswith("stdlib/") and not is_validation(p) and reject_reason(t) is None
               for p, t in files.items())


def test_replay_mixes_general_code_into_personalization(repo, tiny_model, tmp_path):
    from training.personalize import PersonalizeConfig, personalize

    summary = personalize(PersonalizeConfig(repo=str(repo), out=str(tmp_path / "r"),
                                            base=str(tiny_model), minutes=0.03, batch_size=2,
                                            seq_len=192, lora_rank=4, replay=0.5,
                                            replay_files=5))
    assert summary["replay_files"] == 5
    # about half of the examples were general code, the rest the repository's
    assert 0 < summary["replayed_examples"] < 2 * summary["steps"]


def test_examples_fit_the_sequence_even_when_the_middle_is_the_longest_allowed(tiny_engine):
    # a canvas padded past the sequence left the prompt a negative room, and the prompt's
    # shrinking loop never ended (it hung CI); the padding now stops at half the sequence
    import random

    from training.holes import Hole
    from training.objectives import Specials
    from training.personalize import PersonalizeConfig, make_example

    tok = tiny_engine.tokenizer
    cfg = PersonalizeConfig(repo=".", out="o", base="b", seq_len=128, max_middle=64)
    middle = "".join(f"v{i} = {i}\n" for i in range(40))
    middle = tok.decode(tok.encode(middle)[:64])
    hole = Hole("m.py", 3, 9, "block", "def f(a):\n" * 30, middle, "    return a\n" * 30)
    sp = Specials(tiny_engine.mask_id, tiny_engine.eos_id, tiny_engine.eos_id)
    for seed in range(20):
        ids, start, n = make_example(hole, None, tok, cfg, sp, random.Random(seed))
        assert len(ids) <= cfg.seq_len and n >= len(tok.encode(middle)) - 2 and start > 0
    with pytest.raises(ConfigError, match="max_middle"):
        PersonalizeConfig(repo=".", out="o", base="b", seq_len=128, max_middle=65)


def test_examples_hold_the_files_lines_their_window_leaves_out_as_inference_does(
        repo, tiny_engine):
    import random

    from training.holes import Hole
    from training.objectives import Specials
    from training.personalize import PersonalizeConfig, make_example

    tok = tiny_engine.tokenizer
    cfg = PersonalizeConfig(repo=".", out="o", base="b", context_share=1.0)
    twin = "def lookup(cache, key):\n    k = key(*args)\n    return cache[k]\n\n"
    filler = "".join(f"VALUE_{i} = {i} * {i}\n" for i in range(200))  # past any window
    hole = Hole("pkg/m.py", 204, 205, "line", twin + filler + "def probe(cache, key):\n",
                "    k = key(*args)\n", "    return cache[k]\n")
    sp = Specials(tiny_engine.mask_id, tiny_engine.eos_id, tiny_engine.eos_id)
    ids, start, _ = make_example(hole, RepoIndex(repo, retrieval="file"), tok, cfg, sp,
                                 random.Random(0))
    prompt = tok.decode(ids[:start])
    assert "# pkg/m.py\ndef lookup(cache, key):\n    k = key(*args)\n" in prompt
    assert prompt.count("VALUE_199") == 1  # the window's own lines appear once, not twice


def test_personalizing_an_adapter_stacks_a_second_adapter_on_it(repo, tiny_model, tmp_path):
    # the shipped model is an adapter: personalizing it writes an adapter whose base is that
    # adapter, loading merges the chain in order, and it decodes with the first one's defaults
    import torch

    from engine.api import Engine
    from engine.loading import base_folder, load_model
    from training.personalize import PersonalizeConfig, personalize

    first, second = tmp_path / "first", tmp_path / "second"
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    for base, out in ((tiny_model, first), (first, second)):
        personalize(PersonalizeConfig(repo=str(repo), out=str(out), base=str(base),
                                      minutes=0.03, batch_size=2, seq_len=192, lora_rank=4,
                                      lr=5e-2, validation=0.0))  # the last weights, moved
        if out == first:  # as the shipped adapter: its own decoding defaults and pad cycle
            (first / "generation_config.json").write_text(json.dumps(
                {**gen, "pad_cycle_token_ids": [40, 41]}))
    assert json.loads((second / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(first)
    assert base_folder(second) == tiny_model
    q = "model.layers.0.self_attn.q_proj.weight"
    weights = [load_model(f, "cpu", "float32").model.state_dict()[q]
               for f in (tiny_model, first, second)]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    eng = Engine.load(str(second), device="cpu", dtype="float32")
    assert {40, 41} < eng.end_ids
    assert eng.infill("def f(x):\n", "\n", max_new_tokens=4, steps=2).canvas_len <= 4


def test_answers_with_a_known_verdict_skip_the_test_run():
    from training.holes import Hole
    from training.repo_eval import known_outcome

    hole = Hole("pkg/m.py", 1, 2, "line", "def f(x):\n", "    return x + 1\n", "\nf(1)\n")
    assert known_outcome(hole, "    return x + 1") is True  # the removed line itself
    assert known_outcome(hole, "    return (x +") is False  # no longer parses
    assert known_outcome(hole, "  return x + 1") is None  # other indentation: run the tests
    assert known_outcome(hole, "    return x - 1") is None


def test_kept_answers_are_keyed_by_everything_that_shapes_them(tiny_engine, tmp_path):
    from engine.api import GenerationSettings
    from training.repo_eval import AnswerCache

    a = AnswerCache(tmp_path, tiny_engine, threads=2)
    key = a.key("def f(x):\n", "\n", "", GenerationSettings(max_new_tokens=4))
    assert a.get(key) is None
    a.put(key, "    return x\n")
    others = [a.key("def g(x):\n", "\n", "", GenerationSettings(max_new_tokens=4)),
              a.key("def f(x):\n", "\n", "# ctx\n", GenerationSettings(max_new_tokens=4)),
              a.key("def f(x):\n", "\n", "", GenerationSettings(max_new_tokens=8)),
              # a decode on one thread may round a bf16 sum otherwise than on two
              AnswerCache(tmp_path, tiny_engine, threads=1).key(
                  "def f(x):\n", "\n", "", GenerationSettings(max_new_tokens=4))]
    assert len({key, *others}) == 5
    with open(a.path, "a") as fh:
        fh.write('{"key": "cut by a ki')  # a kill mid-line loses that answer only
    b = AnswerCache(tmp_path, tiny_engine, threads=2)  # another run of the same model
    assert b.get(key) == "    return x\n" and b.get(others[0]) is None
    assert (b.hits, b.misses) == (1, 1)


def test_parent_minutes_teach_the_repository_to_the_rerank_parent_and_resume(repo, tiny_model,
                                                                              tmp_path):
    # the parent (whose likelihood reranks answers) learns the repository as a LoRA adapter in
    # OUT/parent; the engine then asks it instead of the generic base, also for an adapter
    # stacked on the personalized one (GRPO's), and a rerun resumes that phase
    import torch

    from engine.api import Engine
    from engine.loading import load_model
    from training.objectives import causal_lm_loss
    from training.personalize import PersonalizeConfig, file_stream, personalize

    first, second = tmp_path / "first", tmp_path / "second"
    personalize(PersonalizeConfig(repo=str(repo), out=str(first), base=str(tiny_model),
                                  minutes=0.02, batch_size=2, seq_len=192, lora_rank=4))
    cfg = dict(repo=str(repo), out=str(second), base=str(first), minutes=0.02, batch_size=2,
               seq_len=192, lora_rank=4, lr=2e-2, parent_window=64)
    summary = personalize(PersonalizeConfig(**cfg, parent_minutes=0.05))
    taught = second / "parent"
    assert json.loads((taught / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(tiny_model)
    assert Engine.load(str(first), device="cpu", dtype="float32").parent_folder == tiny_model
    eng = Engine.load(str(second), device="cpu", dtype="float32")
    assert eng.parent_folder == taught

    tok = eng.tokenizer
    files = RepoIndex(repo, []).files
    stream = torch.tensor(file_stream(files, tok, 0)[:512])[None]
    with torch.no_grad():
        generic = causal_lm_loss(load_model(tiny_model, "cpu", "float32").model, stream)[1]
        learned = causal_lm_loss(eng.parent, stream)[1]
    assert learned["loss"] < generic["loss"] - 0.1

    resumed = personalize(PersonalizeConfig(**cfg, parent_minutes=0.1))
    assert resumed["steps"] == summary["steps"]  # the diffusion phase was already done
    assert resumed["parent"]["steps"] > summary["parent"]["steps"]

    with pytest.raises(ConfigError, match="--parent-minutes"):  # before any training
        personalize(PersonalizeConfig(repo=str(repo), out=str(tmp_path / "x"),
                                      base=str(tiny_model), minutes=0.01, batch_size=2,
                                      seq_len=192, parent_minutes=0.01))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--minutes must be positive"):
        PersonalizeConfig(repo=str(repo), out=str(tmp_path / "x"), minutes=0)

    # --minutes 0: only the parent learns; the diffusion model decodes as before
    alone = tmp_path / "alone"
    personalize(PersonalizeConfig(**{**cfg, "out": str(alone), "minutes": 0},
                                  parent_minutes=0.02))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(load_model(alone, "cpu", "float32").model.state_dict()[q],
                       load_model(first, "cpu", "float32").model.state_dict()[q])
    assert Engine.load(str(alone), device="cpu", dtype="float32").parent_folder == \
        alone / "parent"


def test_kept_answers_are_keyed_by_the_parent_that_reranks(tiny_adapter, tmp_path):
    # a rerank's answer depends on the parent's weights: a taught parent/ is another key
    import shutil

    from engine.api import Engine, GenerationSettings
    from training.repo_eval import AnswerCache

    taught = tmp_path / "taught"
    shutil.copytree(tiny_adapter, taught)
    shutil.copytree(tiny_adapter, taught / "parent")  # an adapter on the same base
    settings = GenerationSettings(max_new_tokens=4, parent_branches=2)
    keys = [AnswerCache(tmp_path / "answers", Engine.load(str(f), device="cpu",
                                                          dtype="float32"), threads=1)
            .key("def f(x):\n", "\n", "", settings) for f in (tiny_adapter, taught)]
    assert keys[0] != keys[1]


def test_documents_mix_masked_windows_of_the_repositorys_text_into_personalization(
        repo, tiny_model, tmp_path):
    import random

    from training.personalize import PersonalizeConfig, document_example, personalize

    stream = list(range(1000))
    ids, start, n = document_example(stream, 192, random.Random(0))
    # a contiguous window of the text, every token but the first a possible target
    assert len(ids) == 192 and ids == stream[ids[0]:ids[0] + 192] and (start, n) == (1, 191)
    assert document_example(stream[:50], 192, random.Random(0)) == (stream[:50], 1, 49)
    summary = personalize(PersonalizeConfig(repo=str(repo), out=str(tmp_path / "d"),
                                            base=str(tiny_model), minutes=0.03, batch_size=4,
                                            seq_len=192, lora_rank=4, documents=0.5))
    assert 0 < summary["document_examples"] < 4 * summary["steps"]
    with pytest.raises(ConfigError, match="--documents"):
        PersonalizeConfig(repo=str(repo), out=str(tmp_path / "e"), documents=0.6, replay=0.5)


def test_documents_and_replay_each_take_the_share_asked_for():
    import random
    from collections import Counter

    from training.personalize import example_kind

    def shares(documents, replay, n=20000):
        rng = random.Random(0)
        counts = Counter(example_kind(rng, documents, replay) for _ in range(n))
        return {k: counts[k] / n for k in ("document", "replay", "hole")}

    both = shares(0.5, 0.25)  # replay drawn after a failed document draw gave 0.125
    assert abs(both["document"] - 0.5) < 0.02 and abs(both["replay"] - 0.25) < 0.02
    assert shares(0.0, 0.0) == {"document": 0.0, "replay": 0.0, "hole": 1.0}
    assert shares(0.0, 0.3)["document"] == 0 and abs(shares(0.0, 0.3)["replay"] - 0.3) < 0.02
    # with one share set, the same draws decide as before the split (runs reproduce)
    a, b = random.Random(5), random.Random(5)
    assert [example_kind(a, 0.0, 0.3) for _ in range(50)] == \
        [("replay" if b.random() < 0.3 else "hole") for _ in range(50)]


def test_copy_holes_are_the_holes_whose_lines_occur_again_in_their_file(
        repo, tiny_model, tmp_path):
    from training.holes import shows_answer
    from training.personalize import PersonalizeConfig, personalize, repeated_spans, training_spans

    text = ("def f(cache):\n    hits = misses = 0\n    cache.clear()\n    return hits\n\n"
            "def g(cache):\n    hits = misses = 0\n    value = cache.pop()\n    return value\n")
    files = {"m.py": text}
    lines = text.splitlines()
    kept = {(kind, tuple(lines[a:b])) for kind, spans in
            repeated_spans(training_spans(files), files).items() for _, a, b in spans}
    assert ("line", ("    hits = misses = 0",)) in kept  # written in both functions
    assert ("line", ("    cache.clear()",)) not in kept  # written once
    assert ("line", ("    return value",)) not in kept
    # a block counts only when each of its lines occurs outside it
    assert not any(kind == "block" and "    cache.clear()" in span for kind, span in kept)
    twice = {"m.py": "def f():\n    x = 1\n    x = 1\n    return x\n"}
    both = [(a, b) for k, spans in repeated_spans(training_spans(twice), twice).items()
            for _, a, b in spans if k == "block"]
    assert (1, 3) not in both  # the same line twice inside the span is not a copy from outside
    files["other.py"] = "def h(cache):\n    cache.clear()\n"  # another file counts too
    kept = {tuple(lines[a:b]) for rel, a, b in repeated_spans(training_spans(files), files)
            ["line"] if rel == "m.py"}
    assert ("    cache.clear()",) in kept and ("    return value",) not in kept
    assert shows_answer("    x = 1\n", "# m.py\ny = 2\nx = 1\n")
    assert not shows_answer("    x = 1\n    y = 3\n", "x = 1\n") and not shows_answer("\n", "")
    asked = dict(base=str(tiny_model), minutes=0.03, batch_size=4, seq_len=256, lora_rank=4,
                 copy_holes=1.0, validation=0.0)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "m.py").write_text("def f(cache):\n    cache.clear()\n    return cache\n")
    with pytest.raises(ConfigError, match="--copy-holes found no hole"):  # no line repeats
        personalize(PersonalizeConfig(repo=str(lone), out=str(tmp_path / "n"), **asked))
    # the idiom twice, far enough apart that a window around one leaves the other out
    filler = "".join(f"\ndef a{i}():\n    return {i}\n" for i in range(30))
    (lone / "m.py").write_text(text.replace("\ndef g", filler + "\ndef g"))
    summary = personalize(PersonalizeConfig(repo=str(lone), out=str(tmp_path / "c"), **asked))
    assert summary["steps"] > 0 and summary["repeated_holes"] == {"line": 2}
    assert summary["copy_examples"] > 0  # the holes trained on had their answer in context
    with pytest.raises(ConfigError, match="--copy-holes"):
        PersonalizeConfig(repo=str(repo), out=str(tmp_path / "e"), copy_holes=1.5)


def test_personalization_reports_how_well_the_model_recalls_the_repositorys_text(
        repo, tiny_model, tmp_path):
    import torch

    from engine.loading import load_model
    from engine.tokenizer import DreamTokenizer
    from training.personalize import (PersonalizeConfig, file_stream, personalize, probe_batch,
                                      probe_ce)

    loaded = load_model(tiny_model, "cpu", "float32")
    tok = DreamTokenizer.from_folder(tiny_model)
    stream = file_stream(RepoIndex(repo, []).files, tok, loaded.config.eos_token_id)
    probe = probe_batch(stream, 0, loaded.config.mask_token_id)
    again = probe_batch(stream, 0, loaded.config.mask_token_id)
    assert all(torch.equal(a, b) for a, b in zip(probe, again))  # one fixed test per repository
    masked, t = probe[2], probe[3]
    assert masked.any(1).all() and sorted(set(t.tolist())) == [0.25, 0.5, 0.75]
    before = probe_ce(loaded.model, probe, bf16=True)
    summary = personalize(PersonalizeConfig(repo=str(repo), out=str(tmp_path / "p"),
                                            base=str(tiny_model), minutes=0.05, batch_size=4,
                                            seq_len=192, lr=3e-3, documents=0.9,
                                            validation=0.0))
    # the run scores the base before it trains, then what it learnt of the same text
    assert summary["probe_ce"]["start"] == before
    assert summary["probe_ce"]["end"] < before


def test_validation_files_are_a_fixed_share_of_the_text_that_training_never_reads():
    from training.personalize import validation_files

    files = {f"pkg/m{i}.py": "x = 1\n" * (10 + i) for i in range(20)} | {"pkg/__init__.py": ""}
    held = validation_files(files, 0.1)
    total = sum(len(t) for t in files.values())
    assert held and sum(len(t) for t in held.values()) <= 0.1 * total
    assert held == validation_files(dict(reversed(files.items())), 0.1)  # by path, not order
    assert "pkg/__init__.py" not in held  # an empty file validates nothing
    assert validation_files(files, 0) == {} and validation_files({"a.py": "x\n"}, 0.1) == {}
    # one file too big for the share: the smallest file still validates
    assert validation_files({"big.py": "x\n" * 100, "small.py": "y\n" * 30}, 0.1) == \
        {"small.py": "y\n" * 30}


def test_personalization_writes_the_weights_that_scored_best_on_its_validation_files(
        repo, tiny_model, tmp_path):
    # a learning rate that wrecks the model: every step scores worse on the files training
    # never read, so the run writes back the weights it started from
    from engine.loading import load_model
    from engine.tokenizer import DreamTokenizer
    from training.personalize import (PersonalizeConfig, file_stream, personalize, probe_batch,
                                      probe_ce)

    out = tmp_path / "wrecked"
    summary = personalize(PersonalizeConfig(repo=str(repo), out=str(out), base=str(tiny_model),
                                            minutes=0.04, batch_size=2, seq_len=192, lr=100.0,
                                            eval_seconds=0.0, bf16=False))
    val = summary["validation"]
    assert len(val["ce"]) >= 3 and val["ce"][0][0] == 0  # the start, each step, the end
    assert min(ce for _, ce in val["ce"][1:]) > val["ce"][0][1] and val["kept_step"] == 0
    assert summary["steps"] >= 2
    written = load_model(out, "cpu", "float32")
    held = {rel: (repo / rel).read_text() for rel in val["files"]}
    tok = DreamTokenizer.from_folder(tiny_model)
    probe = probe_batch(file_stream(held, tok, written.config.eos_token_id), 0,
                        written.config.mask_token_id)
    # the written model is the base again (saved in bf16, so to a rounding)
    assert probe_ce(written.model, probe, bf16=False) == pytest.approx(val["ce"][0][1], abs=0.05)
    # the finished run asked again resumes its checkpoint (the last weights) and still writes
    # the best: it outlives the process that found it
    again = personalize(PersonalizeConfig(repo=str(repo), out=str(out), base=str(tiny_model),
                                          minutes=0.04, batch_size=2, seq_len=192, lr=100.0,
                                          eval_seconds=0.0, bf16=False))
    assert again["steps"] == summary["steps"] and again["validation"]["kept_step"] == 0
    rewritten = load_model(out, "cpu", "float32")
    assert probe_ce(rewritten.model, probe, bf16=False) == pytest.approx(val["ce"][0][1], abs=0.05)
    with pytest.raises(ConfigError, match="--validation"):
        PersonalizeConfig(repo=str(repo), out=str(out), validation=0.5)


def test_personalization_writes_its_last_weights_unless_an_earlier_point_beats_them_clearly(
        repo, tiny_model, tmp_path):
    from engine.loading import load_model
    from training.personalize import PersonalizeConfig, personalize

    out = tmp_path / "tolerant"
    # the wrecking learning rate again, with a tolerance wider than any loss it can cause
    summary = personalize(PersonalizeConfig(repo=str(repo), out=str(out), base=str(tiny_model),
                                            minutes=0.04, batch_size=2, seq_len=192, lr=100.0,
                                            eval_seconds=0.0, bf16=False, keep_last_within=1e9))
    val = summary["validation"]
    assert val["ce"][-1][1] > val["ce"][0][1]  # the last weights scored worse than the base
    assert val["kept_step"] == summary["steps"] >= 2
    written = load_model(out, "cpu", "float32").model.state_dict()
    base = load_model(tiny_model, "cpu", "float32").model.state_dict()
    assert any(not torch.equal(written[k], base[k]) for k in base)  # the last, not the base
    with pytest.raises(ConfigError, match="keep_last_within"):
        PersonalizeConfig(repo=str(repo), out=str(out), keep_last_within=-0.1)


def test_the_engines_code_fingerprint_ignores_comments_and_docstrings_not_code(tmp_path):
    from training.repo_eval import code_fingerprint

    module = tmp_path / "m.py"
    module.write_text('"""Doc."""\n\ndef f(x):\n    """What f does."""\n    return x + 1\n')
    first = code_fingerprint(tmp_path)
    module.write_text('"""Other doc."""\n\n\ndef f(x):  # why\n    """Said otherwise."""\n'
                      '    return x + 1\n')
    assert code_fingerprint(tmp_path) == first
    module.write_text('def f(x):\n    return x + 2\n')
    assert code_fingerprint(tmp_path) != first
    (tmp_path / "n.py").write_text("")
    module.write_text('def f(x):\n    return x + 1\n')
    assert code_fingerprint(tmp_path) != first  # another file is another engine


def test_validation_holes_are_fixed_fully_masked_answers_in_the_validation_files(
        repo, tiny_model, tmp_path):
    from engine.loading import load_model
    from engine.tokenizer import DreamTokenizer
    from training.personalize import (VALIDATION_HOLES, PersonalizeConfig, canvas_specials,
                                      personalize, probe_ce, validation_holes)
    from .repos import CIRCLES

    tok = DreamTokenizer.from_folder(tiny_model)
    loaded = load_model(tiny_model, "cpu", "float32")
    sp = canvas_specials(tiny_model, tok, loaded.config)
    held = {"geometry/circles.py": CIRCLES}
    index = RepoIndex.from_texts(repo, {k: v for k, v in RepoIndex(repo, []).files.items()
                                        if k not in held})
    cfg = PersonalizeConfig(repo=str(repo), out=str(tmp_path / "x"), seq_len=192)
    batch = validation_holes(held, index, tok, cfg, sp)
    assert all(torch.equal(a, b) for a, b in
               zip(batch, validation_holes(held, index, tok, cfg, sp)))  # one fixed test
    x, _, masked, t, eligible, _ = batch
    assert len(x) == VALIDATION_HOLES
    assert t.tolist() == [1.0] * len(t) and masked.sum(1).tolist() == eligible.tolist()
    # "return result" stands in the other file, but no context of this small file shows it:
    # the copies asked for are ordinary holes instead, never a smaller test
    copying = PersonalizeConfig(repo=str(repo), out=str(tmp_path / "x"), seq_len=192,
                                copy_holes=1.0)
    assert len(validation_holes(held, index, tok, copying, sp)[0]) == VALIDATION_HOLES
    for row, where in zip(x, masked):  # each canvas is a held-out answer, unpadded
        answer = tok.decode(row[where].tolist())
        assert answer.strip() and answer.strip() in CIRCLES and sp.pad_id not in row[where]
    # a learning rate that wrecks the model: the weights written are the base's, judged by
    # their cross-entropy on those answers
    summary = personalize(PersonalizeConfig(
        repo=str(repo), out=str(tmp_path / "w"), base=str(tiny_model), minutes=0.04,
        batch_size=2, seq_len=192, lr=100.0, eval_seconds=0.0, bf16=False, validate_on="holes"))
    val = summary["validation"]
    assert val["on"] == "holes" and val["kept_step"] == 0 and summary["steps"] >= 2
    held = {rel: (repo / rel).read_text() for rel in val["files"]}
    index = RepoIndex.from_texts(repo, {k: v for k, v in RepoIndex(repo, []).files.items()
                                        if k not in held})
    start = probe_ce(loaded.model, validation_holes(held, index, tok, cfg, sp), bf16=False)
    assert val["ce"][0][1] == pytest.approx(start, abs=1e-3)
    with pytest.raises(ConfigError, match="--validate-on"):
        PersonalizeConfig(repo=str(repo), out=str(tmp_path / "e"), validate_on="lines")
    with pytest.raises(ConfigError, match="--validate-on text"):  # nothing to ask there
        validation_holes({"geometry/__init__.py": "X = 1\n"}, index, tok, cfg, sp)
