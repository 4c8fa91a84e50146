"""A function's docstring examples checked against candidate bodies (engine.examples)."""

from __future__ import annotations

from engine.api import Engine
from engine.examples import check_program, passes_examples, prompt_examples
from engine.rerank import Candidate

PROMPT = '''import math


def helper(x):
    """>>> helper(1)
    1
    """
    return x


def double(x: int) -> int:
    """Twice x.

    >>> double(2)
    4
    >>> [double(n) for n in range(3)]
    [0, 2,  4]
    """
'''


def test_the_examples_are_those_of_the_last_function():
    examples = prompt_examples(PROMPT)
    assert examples.startswith("Twice x.") and "helper(1)" not in examples
    assert examples.endswith("[0, 2,  4]")  # the docstring's text: no closing quotes
    assert prompt_examples('def f():\n    """No examples here."""\n') == ""
    assert prompt_examples("x = 1\n") == ""
    # a body begun above the cursor: a candidate would be checked without its first lines
    assert prompt_examples(PROMPT + "    y = x\n") == ""


def test_a_body_passes_only_when_every_example_does():
    examples = prompt_examples(PROMPT)
    assert passes_examples(PROMPT, "    return 2 * x\n", examples)  # output spacing forgiven
    assert not passes_examples(PROMPT, "    return x + 2\n", examples)  # right on the first only
    assert not passes_examples(PROMPT, "    return x *\n", examples)  # does not parse
    assert not passes_examples(PROMPT, "    while True:\n        pass\n", examples, timeout_s=1)
    # a body that exits the interpreter has passed no example
    assert not passes_examples(PROMPT, "    raise SystemExit(0)\n", examples)
    assert check_program(PROMPT, "    return 2 * x", examples).startswith(PROMPT)


def test_candidates_that_pass_the_examples_come_first_in_the_parents_order():
    ranked = [Candidate("    return x + 2", "parent", -0.1),
              Candidate("    return 2 * x", "diffusion", -0.5),
              Candidate("    return x * 2", "parent", -0.7)]
    record: dict = {}
    got = Engine.by_examples(ranked, PROMPT, "", record, prompt_examples(PROMPT))
    assert [c.text for c in got] == ["    return 2 * x", "    return x * 2", "    return x + 2"]
    assert record == {"examples_passed": 2, "unchecked": "    return x + 2"}
    # none passes: the parent's order stands; no examples: nothing is run or recorded
    record = {}
    assert Engine.by_examples(ranked[:1], PROMPT, "", record,
                              prompt_examples(PROMPT)) == ranked[:1]
    assert record == {"examples_passed": 0}
    record = {}
    plain = 'def f(x):\n    """Twice x."""\n'
    assert Engine.by_examples(ranked, plain, "", record, prompt_examples(plain)) == ranked and record == {}
