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
