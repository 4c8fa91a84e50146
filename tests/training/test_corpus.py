"""Corpus filters and HumanEval decontamination on hand-made files."""

from __future__ import annotations

import json

from training.corpus import is_validation, reject_reason
from training.decontam import Decontaminator, human_eval_problems


def test_decontaminator_drops_humaneval_code_and_keeps_ordinary_code():
    problems = human_eval_problems()
    assert len(problems) == 164
    dc = Decontaminator.from_problems(problems)
    p = problems[0]
    assert dc.reason(p["prompt"] + p["canonical_solution"]) is not None
    # the signature alone is enough
    sig = next(l for l in p["prompt"].splitlines() if l.startswith("def "))
    assert dc.reason(f"import os\n\n{sig}\n    pass\n").startswith("signature")
    # a renamed copy of a solution body still shares a 13-gram of words
    renamed = problems[10]["canonical_solution"]
    assert dc.reason("def other(string):\n" + renamed) is not None
    ordinary = "def parse_header(line):\n    key, _, value = line.partition(':')\n" \
               "    return key.strip().lower(), value.strip()\n"
    assert dc.reason(ordinary) is None


def test_number_tables_do_not_count_as_contamination():
    dc = Decontaminator.from_problems(human_eval_problems())
    table = "DATA = [" + ", ".join(str(i) for i in range(200)) + "]\n"
    assert dc.reason(table) is None


def test_quality_filters():
    good = "def f(x):\n    return x + 1\n\n\nclass A:\n    value = 3\n" * 3
    assert reject_reason(good) is None
    assert reject_reason("x = 1\n") == "tiny"
    assert reject_reason("# Auto-generated file, do not edit\n" + good) == "generated"
    assert reject_reason(good + "def broken(:\n") == "unparsable"
    assert reject_reason("x = '" + "a" * 2000 + "'\n" + good) == "long-line"


def test_split_is_stable_and_about_two_percent():
    paths = [f"pkg/module_{i}.py" for i in range(5000)]
    val = [p for p in paths if is_validation(p)]
    assert val == [p for p in paths if is_validation(p)]
    assert 50 < len(val) < 160


def test_tokenizer_reuse_encodes_with_a_model_folder_tokenizer(tiny_model, tmp_path):
    import subprocess
    import sys

    import numpy as np

    from engine.tokenizer import DreamTokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "val"):
        with open(corpus / f"{split}.jsonl", "w") as fh:
            fh.write(json.dumps({"text": "x = '<|mask|>'\ndef f(a):\n    return a\n"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "cli", "train", "tokenizer", "--corpus",
                        str(corpus), "--reuse", str(tiny_model), "--out", str(tmp_path / "tok"),
                        "--tokens", str(tmp_path / "tokens")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == \
        (tiny_model / "tokenizer.json").read_text()
    ids = np.fromfile(tmp_path / "tokens" / "train.bin", dtype=np.uint16).tolist()
    tok = DreamTokenizer.from_folder(tiny_model)
    assert tok.token_id("<|mask|>") not in ids  # corpus text never becomes a control token
    assert ids[-1] == tok.token_id("<|endoftext|>")
