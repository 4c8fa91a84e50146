"""Run untrusted (model-written) Python in a child process with time and memory limits.

Each program runs as ``python -I -S`` (isolated: no user site, no PYTHON* variables) in a fresh
temporary directory with an empty environment, under RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE
and RLIMIT_NPROC, plus a wall-clock timeout that kills its whole process group. It is what
HumanEval's execution.py does in-process, moved out of the caller's process so a crash, an
infinite loop or ``os.system`` in generated code cannot harm the caller. ``RepoSandbox`` runs a
repository's own test suite the same way, on a temporary copy of the repository.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from engine.errors import SandboxError


@dataclass
class RunResult:
    passed: bool
    status: str
    """passed | failed | timeout"""
    detail: str = ""
    failed_tests: tuple[str, ...] = ()
    """The tests a failed pytest run lists as FAILED or ERROR in its short summary (pytest's
    default ``-r fE``; the whole suite's only without ``-x``); empty for other runners."""


def _limits(memory_mb: int, cpu_s: int, file_mb: int = 1):
    def apply() -> None:
        import resource

        os.setsid()
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(program: str, timeout_s: float = 5.0, memory_mb: int = 512) -> RunResult:
    """Run ``program``; passed means exit status 0 within the limits."""
    if sys.platform == "win32":
        raise SandboxError("the code sandbox needs a POSIX system (resource limits); "
                           "run evaluations on Linux or macOS")
    with tempfile.TemporaryDirectory(prefix="unmask-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as fh:
            fh.write(program)
        return run_limited([sys.executable, "-I", "-S", path], tmp,
                           {"PATH": "/usr/bin:/bin", "HOME": tmp}, timeout_s, memory_mb,
                           file_mb=1, what="the sandboxed interpreter", keep_stdout=False)


@functools.lru_cache(maxsize=1)
def network_jail() -> tuple[str, ...]:
    """``unshare -rn`` where the system allows it: the child then runs in a new, empty network
    namespace (no interface up, not even loopback), so generated code cannot open sockets.
    Empty where unavailable (the time, memory and file limits still apply)."""
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "-rn") if ok else ()


def run_limited(argv: list[str], cwd, env: dict, timeout_s: float, memory_mb: int,
                file_mb: int, what: str, keep_stdout: bool = True) -> RunResult:
    """Run ``argv`` in its own process group under the limits; the last output line explains a
    failure. Output goes to a temporary file, so RLIMIT_FSIZE bounds it too. Every sandboxed
    run (a program, a repository's test suite) goes through here."""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen([*network_jail(), *argv], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL,
                                    stdout=out if keep_stdout else subprocess.DEVNULL,
                                    stderr=out,
                                    preexec_fn=_limits(memory_mb, int(timeout_s) + 1, file_mb))
        except OSError as err:
            raise SandboxError(f"cannot run {what} ({argv[0]}): {err}") from err
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return RunResult(False, "timeout")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode == 0:
            return RunResult(True, "passed")
        out.seek(max(0, out.seek(0, 2) - SUMMARY_BYTES))
        lines = out.read().decode(errors="replace").strip().splitlines()
        return RunResult(False, "failed", lines[-1] if lines else f"exit {proc.returncode}",
                         failed_tests(lines))


SUMMARY_BYTES = 1 << 18
"""How much of a failed run's output is read back: its last line, and pytest's short summary."""


def failed_tests(lines: list[str]) -> tuple[str, ...]:
    """Test ids from pytest's short summary lines (``FAILED tests/t.py::test_a - assert 0``,
    ``ERROR tests/t.py``), in order, each once."""
    found = [m[1] for m in map(SUMMARY_LINE.match, lines) if m]
    return tuple(dict.fromkeys(found))


SUMMARY_LINE = re.compile(r"(?:FAILED|ERROR) ((?!\()[^\s\[]+(?:\[[^\]]*\])?)(?: - |$)")
"""A short-summary line's test id: a path and name, and its parameters' brackets (which may
hold spaces); not unittest's ``FAILED (failures=1)``."""


COPY_IGNORED = (".git", ".hg", ".venv", "venv", ".tox", ".nox", "node_modules", "__pycache__",
                ".mypy_cache", ".pytest_cache", "*.pyc")


class RepoSandbox:
    """A temporary copy of a repository in which its own test suite runs with changed files.

    The user's tree is only read (copied once); every run writes the given file texts into the
    copy, runs the test command there under time and memory limits with a minimal environment
    (``src/`` layouts importable) and no network (``network_jail``), and restores the copy's
    files afterwards: the ones it wrote, and any other file the run deleted or changed (code
    under test that removes files must not spoil the next run).
    """

    def __init__(self, root, test_cmd: str = "python -m pytest -x -q", timeout_s: float = 60.0,
                 memory_mb: int = 2048) -> None:
        import shlex
        from pathlib import Path

        self.source = Path(root)
        self.tmp = tempfile.TemporaryDirectory(prefix="unmask-repo-")
        self.root = Path(self.tmp.name) / "repo"
        shutil.copytree(self.source, self.root, symlinks=True,
                        ignore=shutil.ignore_patterns(*COPY_IGNORED))
        self.argv = [sys.executable if a in ("python", "python3") else a
                     for a in shlex.split(test_cmd)]
        if not self.argv:
            raise SandboxError("--test-cmd is empty; give the command that runs the tests")
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        paths = [str(self.root)]
        if (self.root / "src").is_dir():  # src layouts import from there
            paths.append(str(self.root / "src"))
        self.env = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
                    "HOME": str(Path(self.tmp.name)), "PYTHONPATH": ":".join(paths),
                    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        # a second copy to repair from, in a folder the child is never told about
        self.spare = tempfile.TemporaryDirectory(prefix="unmask-pristine-")
        self.pristine = Path(self.spare.name) / "repo"
        shutil.copytree(self.root, self.pristine, symlinks=True)
        self.manifest = self._stat_all()
        self.restored = 0
        """Files a run deleted or changed and that were put back (for the caller's report)."""

    def _stat_all(self) -> dict[str, tuple[int, int]]:
        out = {}
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                out[os.path.relpath(path, self.root)] = (st.st_size, st.st_mtime_ns)
        return out

    def _repair(self, written: dict) -> None:
        """Put back every original file a run deleted or changed (and the ``written`` ones),
        from the pristine copy."""
        for rel, stamp in self.manifest.items():
            path = self.root / rel
            try:
                st = os.lstat(path)
                if (st.st_size, st.st_mtime_ns) == stamp:
                    continue
            except OSError:
                pass
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.pristine / rel, path, follow_symlinks=False)
            self.restored += rel not in written

    def run(self, files: dict[str, str] | None = None) -> RunResult:
        """Run the suite with ``files`` ({relative path: text}) in place of the copy's own."""
        files = files or {}
        try:
            for rel, text in files.items():
                (self.root / rel).write_text(text, encoding="utf-8")
            return self._run()
        finally:
            self._repair(files)

    def _run(self) -> RunResult:
        return run_limited(self.argv, self.root, self.env, self.timeout_s, self.memory_mb,
                           file_mb=64, what="the test command (pass --test-cmd)")

    def close(self) -> None:
        self.tmp.cleanup()
        self.spare.cleanup()

    def __enter__(self) -> "RepoSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
