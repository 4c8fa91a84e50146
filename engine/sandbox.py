"""Run untrusted (model-written) Python in a child process with time and memory limits.

Each program runs as ``python -I -S`` (isolated: no user site, no PYTHON* variables) in a fresh
temporary directory with an empty environment, under RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE
and RLIMIT_NPROC, plus a wall-clock timeout that kills its whole process group. It is what
HumanEval's execution.py does in-process, moved out of the caller's process so a crash, an
infinite loop or ``os.system`` in generated code cannot harm the caller.
"""

from __future__ import annotations

import os
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


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:
        import resource

        os.setsid()
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
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
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", path], cwd=tmp,
                                    env={"PATH": "/usr/bin:/bin", "HOME": tmp},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE,
                                    preexec_fn=_limits(memory_mb, int(timeout_s) + 1))
        except OSError as err:
            raise SandboxError(f"cannot start the sandboxed interpreter: {err}") from err
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return RunResult(False, "timeout")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode == 0:
            return RunResult(True, "passed")
        tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        return RunResult(False, "failed", tail[0] if tail else f"exit {proc.returncode}")
