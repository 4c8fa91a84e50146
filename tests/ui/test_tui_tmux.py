"""The installed `unmask tui` starts in a real terminal (tmux) and quits cleanly with ctrl+q."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True).stdout


def test_tui_starts_and_quits_in_tmux(tiny_model, tmp_path):
    unmask = Path(sys.executable).parent / "unmask"
    if not unmask.exists():
        pytest.skip("the unmask console script is not installed in this environment")
    (tmp_path / "hello.py").write_text("def hello():\n    pass\n")
    session = f"unmask-test-{int(time.time() * 1000) % 100000}"
    status = tmp_path / "status"
    cmd = (f"UNMASK_CONFIG_DIR={tmp_path / 'cfg'} {unmask} tui {tmp_path / 'hello.py'} "
           f"--model {tiny_model}; echo $? > {status}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "30", cmd],
                   check=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "model · torch" not in capture(session):
            time.sleep(0.3)
        screen = capture(session)
        assert "def hello():" in screen and "model · torch" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.time() + 20
        while time.time() < deadline and not status.exists():
            time.sleep(0.2)
        assert status.exists() and status.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
