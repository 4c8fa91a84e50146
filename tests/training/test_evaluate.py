"""The HumanEval infilling harness: task construction, sandboxed scoring, the CLI table."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.sandbox import run_python
from training.decontam import human_eval_problems
from training.evaluate import (first_line, multi_line_tasks, program, single_line_tasks,
                               truncate_function)


def test_single_line_construction_matches_the_fim_paper():
    tasks = single_line_tasks(human_eval_problems())
    assert len(tasks) == 1033
    assert all(t.middle.strip() and t.middle.endswith("\n") for t in tasks)


def test_reference_middles_pass_and_wrong_ones_fail():
    problems = human_eval_problems()
    for task in single_line_tasks(problems)[:12] + multi_line_tasks(problems)[:6]:
        ok = run_python(program(task.prefix, task.middle, task.suffix, task.test,
                                task.entry_point))
        assert ok.passed, (task.task_id, ok.detail)
    task = single_line_tasks(problems)[3]
    bad = run_python(program(task.prefix, "    return None\n", task.suffix, task.test,
                             task.entry_point))
    assert not bad.passed


def test_post_processing():
    assert first_line("    return x\n    y = 2\n") == "    return x\n"
    assert truncate_function("    return 1\n\ndef other():\n    pass\n") == "    return 1\n"


def test_eval_cli_prints_table_and_summary(tmp_path):
    out = tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, "-m", "cli", "eval", "infill-single", "--empty",
                        "--limit", "8", "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pass@1" in r.stdout
    summary = json.loads(r.stderr.strip().splitlines()[-1])
    assert summary["n"] == 8 and summary["model"] == "empty"
    assert len(out.read_text().splitlines()) == 8
    assert not (tmp_path / "r.jsonl.partial").exists()  # the journal is gone once all are in
    r = subprocess.run([sys.executable, "-m", "cli", "eval", "infill-single", "--empty",
                        "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "add --out FILE" in r.stderr.strip().splitlines()[-1]


def test_a_stopped_eval_resumes_from_its_journal_and_refuses_another_runs(tiny_engine,
                                                                          tmp_path):
    import pytest

    from engine.errors import ConfigError
    from training.evaluate import eval_infill, task_settings
    from training.journal import Journal

    settings = task_settings(tiny_engine, True, max_new_tokens=6, steps=3)
    key = {"task": "infill-single", "settings": settings}
    fresh = eval_infill(tiny_engine, settings, True, 4, "fixed")

    def stop_after_two(done, total, passed):
        if done == 2:
            raise KeyboardInterrupt  # Ctrl-C, or the session ending
    out = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt):
        eval_infill(tiny_engine, settings, True, 4, "fixed", progress=stop_after_two,
                    journal=Journal(out, key, resume=False))
    partial = tmp_path / "r.jsonl.partial"
    with partial.open("a") as f:
        f.write('{"task_id": "HumanEval/9')  # the record being written when it was killed
    seen = []
    journal = Journal(out, key, resume=True)
    assert len(journal.done) == 2
    records = eval_infill(tiny_engine, settings, True, 4, "fixed",
                          progress=lambda done, total, passed: seen.append(done),
                          journal=journal)
    assert seen == [3, 4]  # only the two tasks missing ran
    journal.finish(records)
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in fresh]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert not partial.exists()
    # another run's records are never mixed in
    Journal(out, key, resume=False).add(records[0])
    with pytest.raises(ConfigError, match="records of another run"):
        Journal(out, {**key, "task": "infill-multi"}, resume=True)


def test_spread_picks_evenly_and_keeps_everything_without_a_limit():
    from training.evaluate import spread

    items = list(range(10))
    assert spread(items, 0) == items and spread(items, 20) == items
    assert spread(items, 5) == [0, 2, 4, 6, 8]


def test_parallel_jobs_give_the_same_records_as_one(tmp_path):
    from tests.conftest import make_tiny_folder

    tiny_model = make_tiny_folder(tmp_path / "m", max_position_embeddings=1024)
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}.jsonl"
        r = subprocess.run([sys.executable, "-m", "cli", "eval", "infill-single",
                            "--model", str(tiny_model), "--limit", "4", "--jobs", jobs,
                            "--max-new-tokens", "6", "--steps", "3", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append([{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                     for line in out.read_text().splitlines()])
    assert len(outs[0]) == 4 and outs[0] == outs[1]
    assert "4/4 done" in r.stdout + r.stderr  # progress lines off a terminal


def test_summary_reports_the_probes_relative_length_error():
    from training.evaluate import summarize

    records = [{"passed": True, "completion": "x = 1\n", "expected_len": 15.0,
                "reference_len": 10},
               {"passed": False, "completion": "", "expected_len": 5.0, "reference_len": 10},
               {"passed": False, "completion": ""}]  # a fixed canvas: no estimate
    s = summarize(records, "infill-single", "m", "adaptive")
    assert s["length_error"] == 0.5 and s["passed"] == 1 and s["n"] == 3
    assert summarize(records[2:], "infill-single", "m", "fixed")["length_error"] is None


def test_the_syntax_guard_decodes_again_only_answers_that_break_the_task_file(tiny_engine):
    from engine.syntax_guard import answer_fits, file_can_tell
    from training.evaluate import eval_infill, spread, summarize, task_settings

    def fits(task, completion: str) -> bool:
        return answer_fits(task.prefix, completion[:-1], "\n" + task.suffix)


    settings = task_settings(tiny_engine, True, max_new_tokens=6, steps=3, retries=2)
    plain = eval_infill(tiny_engine, settings, True, limit=6)
    guarded = eval_infill(tiny_engine, settings, True, limit=6, guard=True)
    tasks = spread(single_line_tasks(human_eval_problems()), 6)
    retried = 0
    for task, a, b in zip(tasks, plain, guarded):
        if fits(task, a["completion"]):
            assert b["tries"] == 1 and b["completion"] == a["completion"]
        else:
            retried += 1
            assert b["tries"] > 1
            assert b["completion"] == a["completion"] or fits(task, b["completion"])
    assert retried  # the random model breaks some files: the guard was exercised
    summary = summarize(guarded, "infill-single", "tiny", "adaptive")
    assert summary["retried"] == retried
    assert summary["withheld"] == sum(  # judged (the file can tell) and still unparsable
        file_can_tell(t.prefix, "\n" + t.suffix) and not fits(t, b["completion"])
        for t, b in zip(tasks, guarded))
    assert "retried" not in summarize(plain, "infill-single", "tiny", "adaptive")


def test_the_parent_alone_baseline_decodes_lines_blocks_and_functions(tiny_engine):
    from training.evaluate import ARParent, eval_function, eval_infill, task_settings

    parent = ARParent(tiny_engine)
    for single in (True, False):
        records = eval_infill(parent, task_settings(tiny_engine, single, max_new_tokens=8), single,
                              3, "fixed")
        assert len(records) == 3 and not any(r["status"].startswith("error") for r in records)
        if single:
            assert all(r["completion"].count("\n") <= 1 for r in records)
        else:  # told the reference's line count: never more lines than the hole
            assert all(r["completion"].count("\n") <= r["reference"].count("\n")
                       for r in records)
    (record,) = eval_function(parent, task_settings(tiny_engine, None, max_new_tokens=8), 1)
    assert record["forward_passes"] >= 1
