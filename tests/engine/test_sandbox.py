from engine.sandbox import run_python


def test_pass_fail_timeout_memory():
    assert run_python("assert sum([1, 2]) == 3").passed
    failed = run_python("assert 1 == 2")
    assert not failed.passed and failed.detail == "AssertionError"
    assert run_python("while True:\n    pass\n", timeout_s=1).status == "timeout"
    assert run_python("x = bytearray(3 * 1024 ** 3)", memory_mb=256).detail == "MemoryError"


def test_runs_in_a_fresh_empty_directory_without_environment():
    assert run_python("import os\nassert os.listdir('.') == ['program.py']\n"
                      "assert 'HOME' in os.environ and 'PYTHONPATH' not in os.environ").passed


def test_failed_tests_are_read_from_pytests_short_summary():
    from engine.sandbox import failed_tests

    out = ["..F.E", "=== short test summary info ===",
           "FAILED tests/test_a.py::test_one - AssertionError: assert 1 == 2",
           "FAILED tests/test_a.py::test_two[x - y] - ValueError",
           "ERROR tests/test_b.py - ImportError: no module named c",
           "FAILED tests/test_a.py::test_one - AssertionError: assert 1 == 2",
           "2 failed, 3 passed, 1 error in 0.12s"]
    assert failed_tests(out) == ("tests/test_a.py::test_one", "tests/test_a.py::test_two[x - y]",
                                 "tests/test_b.py")
    assert failed_tests(["Ran 3 tests", "FAILED (failures=1)"]) == ()  # unittest: none
