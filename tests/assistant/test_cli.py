"""The `unmask` command as a user runs it: outputs, JSON contract, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def unmask(*args, input_text=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, input=input_text, timeout=120)


def test_generate_json_contract(tiny_model):
    r = unmask("generate", "--model", str(tiny_model), "--prompt", "def f():", "--json",
               "--max-new-tokens", "8", "--steps", "4", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["token_ids"]) == 8 and isinstance(out["completion"], str)
    assert out["steps"] == 4


def test_block_length_comes_from_generation_config_and_0_overrides_it(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**cfg, "block_length": 1}))
    base = ("generate", "--model", str(folder), "--prompt", "def f():", "--json",
            "--max-new-tokens", "8", "--steps", "4", "--dtype", "float32")
    blocks, whole = unmask(*base), unmask(*base, "--block-length", "0")
    assert blocks.returncode == 0 and whole.returncode == 0, blocks.stderr + whole.stderr
    assert json.loads(blocks.stdout)["steps"] == 8  # one slot per step, left to right
    assert json.loads(whole.stdout)["steps"] == 4  # one block: Dream's schedule


def test_infill_from_files_prints_whole_code(tiny_model, tmp_path):
    (tmp_path / "p.py").write_text("def f(x):\n")
    (tmp_path / "s.py").write_text("    return x\n")
    r = unmask("infill", "--model", str(tiny_model), "--prefix-file", str(tmp_path / "p.py"),
               "--suffix-file", str(tmp_path / "s.py"), "--max-new-tokens", "6", "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def f(x):\n") and r.stdout.rstrip().endswith("return x")


def test_infill_on_an_adapter_is_reranked_by_its_parent_lines_and_blocks(tiny_adapter):
    args = ("infill", "--model", str(tiny_adapter), "--prefix", "def add(a, b):\n",
            "--suffix", "    return total\n", "--max-new-tokens", "12", "--json",
            "--dtype", "float32")
    reranked = json.loads(unmask(*args, "--single-line", "--parent-branches", "2").stdout)
    assert reranked["rerank"]["source"] in ("diffusion", "parent")
    alone = json.loads(unmask(*args, "--single-line", "--parent-branches", "0").stdout)
    assert "rerank" not in alone
    block = json.loads(unmask(*args, "--parent-branches", "2").stdout)
    assert block["rerank"]["source"] in ("diffusion", "parent")
    at_end = args[:5] + ("--suffix", "") + args[7:]  # a function: judged per token
    assert json.loads(unmask(*at_end, "--parent-branches", "2").stdout)["rerank"]["source"] \
        in ("diffusion", "parent")


def test_generate_checks_the_docstring_examples_when_asked(tiny_adapter):
    prompt = 'def double(x):\n    """Twice x.\n\n    >>> double(2)\n    4\n    """\n'
    args = ("generate", "--model", str(tiny_adapter), "--prompt", prompt, "--json",
            "--max-new-tokens", "12", "--dtype", "float32", "--parent-branches", "2")
    checked = json.loads(unmask(*args, "--check-examples").stdout)
    record = checked["rerank"]  # every candidate was run on the examples
    assert 0 <= record["examples_passed"] <= record["candidates"]
    assert "examples_passed" not in json.loads(unmask(*args).stdout)["rerank"]


def test_batch_jsonl_reports_bad_line_and_runs_the_rest(tiny_model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "def f():"}\n{broken\n'
                   '{"id": "c", "prefix": "x = ", "suffix": "\\n"}\n[1, 2]\n')
    out = tmp_path / "out.jsonl"
    r = unmask("infill", "--model", str(tiny_model), "--jsonl", str(src), "--out", str(out),
               "--max-new-tokens", "4", "--steps", "2")
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r.get("id") for r in recs] == ["a", None, "c", None]
    assert "line 2" in recs[1]["error"] and "line 4" in recs[3]["error"]
    assert "completion" in recs[0] and "token_ids" in recs[2]
    assert r.returncode == 1


def test_batch_says_a_repeated_note_once(tiny_model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prefix": "def f(x):\n", "suffix": "\n"}) + "\n"
                           for i in range(4)))
    r = unmask("infill", "--model", str(tiny_model), "--jsonl", str(src), "--out",
               str(tmp_path / "out.jsonl"), "--max-new-tokens", "8", "--block-length", "1",
               "--steps", "4", "--length", "fixed")  # the user's 4 steps must become 8
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("unmask: note: 8 denoising steps instead of 4") == 1
    assert "(4 with a note in their record)" in r.stderr
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all("8 denoising steps instead of 4" in rec["note"] for rec in recs)


@pytest.mark.parametrize("args,needle", [
    (["generate", "--model", "/no/such/model", "--prompt", "x"], "not found"),
    (["generate", "--prompt", "x", "--steps", "0"], "--steps"),
    (["generate", "--prompt", "x", "--steps", "many"], "invalid int"),
    (["generate", "--prompt", "x", "--temperature", "-2"], "--temperature"),
    (["generate", "--prompt", "x", "--device", "tpu"], "unknown device"),
    (["generate", "--prompt", "x", "--alg", "greedy"], "invalid choice"),
    (["infill", "--prefix-file", "/no/such/file"], "cannot read"),
    (["infill", "--prefix", "x = ", "--parent-branches", "12"], "--parent-branches must be"),
    (["generate"], "--prompt"),
    (["generate", "--prompt", "x", "--max-new-tokens", "5000"], "context"),
])
def test_bad_input_is_one_line_nonzero_no_traceback(tiny_model, args, needle):
    if "--model" not in args:
        args = args + ["--model", str(tiny_model)]
    r = unmask(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_pickle_only_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "Dream"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    r = unmask("generate", "--model", str(tmp_path), "--prompt", "x")
    assert r.returncode == 3 and "pickle" in r.stderr


def test_help_lists_commands():
    r = unmask("--help")
    assert r.returncode == 0
    for cmd in ("generate", "infill", "models", "train", "eval"):
        assert cmd in r.stdout


def test_infill_on_a_1000_line_file_answers_and_says_what_it_kept(tiny_model, tmp_path):
    lines = [f"def f{i}(x):\n    return x + {i}\n" for i in range(500)]
    (tmp_path / "a.py").write_text("".join(lines[:300]) + "def g(x):\n")
    (tmp_path / "b.py").write_text("\n" + "".join(lines[300:]))
    r = unmask("infill", "--model", str(tiny_model), "--prefix-file", str(tmp_path / "a.py"),
               "--suffix-file", str(tmp_path / "b.py"), "--max-new-tokens", "8", "--steps", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("".join(lines[:300]) + "def g(x):\n")  # the whole file comes back
    assert r.stdout.endswith("".join(lines[300:]))
    notes = [line for line in r.stderr.splitlines() if line.startswith("unmask: note:")]
    assert len(notes) == 1 and "nearest the hole" in notes[0]
    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({"prefix": (tmp_path / "a.py").read_text(),
                                 "suffix": (tmp_path / "b.py").read_text()}) + "\n")
    r = unmask("infill", "--model", str(tiny_model), "--jsonl", str(batch), "--out",
               str(tmp_path / "out.jsonl"), "--max-new-tokens", "8", "--steps", "4")
    out = json.loads((tmp_path / "out.jsonl").read_text())
    assert r.returncode == 0 and "error" not in out and "nearest the hole" in out["note"]


def test_doctor_reports_models_back_ends_and_what_to_fix(tiny_model):
    import importlib.metadata as md

    ok = unmask("doctor", "--model", str(tiny_model))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert str(tiny_model) in ok.stdout.replace("\n", "").replace("│", "").replace(" ", "") or \
        tiny_model.name in ok.stdout
    assert "language server (pygls)" in ok.stdout and md.version("pygls") in ok.stdout
    assert "back end: llama.cpp" in ok.stdout and "torch" in ok.stdout
    bad = unmask("doctor", "--model", "/no/such/model")
    assert bad.returncode == 1 and "not found" in bad.stdout and "1 thing(s) to fix" in bad.stdout


def test_eval_progress_off_a_terminal_logs_every_50_tasks_with_the_time_left(capsys):
    from cli.train import EvalProgress

    with EvalProgress("repo") as progress:
        for done in range(1, 101):
            progress(done, 100, done // 2)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("repo:")]
    assert lines[0].startswith("repo: 50/100 done, 25 passed, about ") and \
        lines[0].endswith(" min left")
    assert lines[-1].startswith("repo: 100/100 done, 50 passed")


def test_eval_progress_off_a_terminal_logs_a_slow_task_after_a_minute(capsys, monkeypatch):
    import cli.train as train

    clock = [1000.0]
    monkeypatch.setattr(train.time, "monotonic", lambda: clock[0])
    with train.EvalProgress("function") as progress:
        clock[0] += 30
        progress(1, 164, 0)  # half a minute: nothing yet
        clock[0] += 45
        progress(2, 164, 1)  # 75 s since the start: one line
        clock[0] += 10
        progress(3, 164, 1)  # 10 s since that line: nothing
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("function:")]
    assert lines == ["function: 2/164 done, 1 passed, about 101 min left"]


def test_a_time_budget_bar_off_a_terminal_logs_a_line_each_minute(capsys):
    # personalize and grpo run for minutes: a log (CI, a pipe) must show them moving
    from cli.train import _with_bar

    def run(progress):
        for second in (10, 50, 70, 100, 135):
            progress({"elapsed_s": second, "step": second})
        return "done"

    assert _with_bar("personalize", 600, "", lambda rec: f"step {rec['step']}", run) == "done"
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("personalize:")]
    assert lines == ["personalize: 1.2/10 min, step 70", "personalize: 2.2/10 min, step 135"]
