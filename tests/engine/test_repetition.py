import pytest

from engine.repetition import cut_loop, find_loop
from training.evaluate import loops


@pytest.mark.parametrize("text,unit", [
    ("    return x, 1, 1, 1, 1, 1", ", 1"),  # the earliest rotation of the unit
    ("    return Sum, Sum, Sum, Sum, Sum)", " Sum,"),
    ("    # the result is a new\n" * 5, "    # the result is a new\n"),
    ("x = 1-1-1-1-1 1-1-1-1-1 1-1-1-1-1 1-1-1-1-1 ", " 1-1-1-1-1"),
])
def test_find_loop_names_the_repeated_unit(text, unit):
    assert find_loop(text).group(1) == unit


@pytest.mark.parametrize("text", [
    "    if x:\n        return ((a))))\n",  # punctuation runs are not loops
    "        \n        \n        \n        \n",  # nor is indentation
    "    return [1, 1, 1]\n",  # three copies are code
    "    a = f(1)\n    b = f(2)\n    c = f(3)\n    d = f(4)\n",
])
def test_code_that_merely_repeats_a_little_is_not_a_loop(text):
    assert find_loop(text) is None and cut_loop(text) == text and not loops(text)


def test_cut_keeps_the_text_through_the_first_copy():
    assert cut_loop("    return Sum, Sum, Sum, Sum, Sum)") == "    return Sum,"
    lines = "    x = 1\n" + "    # again\n" * 6
    assert cut_loop(lines) == "    x = 1\n    # again"
