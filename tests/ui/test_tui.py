"""The TUI driven by Textual's Pilot: open, generate, accept, cancel, save; plus snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("textual")

from assistant.settings import AssistantSettings  # noqa: E402
from ui.tui.app import UnmaskApp  # noqa: E402

SOURCE = 'def add(a, b):\n    """Return a + b."""\n    pass\n\n\ndef main():\n    return add(1, 2)\n'


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "add.py").write_text(SOURCE)
    (root / "notes.py").write_text("x = 1\n")
    return root


def make_app(project, tiny_model, **settings) -> UnmaskApp:
    s = AssistantSettings(model=str(tiny_model), dtype="float32", max_tokens_block=12, **settings)
    return UnmaskApp(project / "add.py", s, persist_settings=False)


async def wait_until(pilot, cond, tries=200):
    for _ in range(tries):
        if cond():
            return True
        await pilot.pause(0.05)
    return False


async def test_generate_body_streams_then_accept_is_one_undo_step(project, tiny_model):
    app = make_app(project, tiny_model)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_until(pilot, lambda: app.engine is not None)
        assert app.editor.text == SOURCE and not app.dirty
        app.editor.cursor_location = (2, 6)
        await pilot.press("ctrl+g")
        assert await wait_until(pilot, lambda: app.request and app.request.candidates)
        assert app.canvas.has_class("active")
        text, frame = app.request.candidates[0]
        assert min(frame.order) >= 0 and max(frame.order) == frame.steps - 1  # all decoded, in order
        await pilot.press("tab")
        await pilot.pause()
        assert "    pass" not in app.editor.text and app.editor.text.endswith(
            "def main():\n    return add(1, 2)\n")
        assert app.dirty and not app.canvas.has_class("active")
        app.editor.undo()
        await pilot.pause()
        assert app.editor.text == SOURCE


async def test_escape_cancels_a_running_generation(project, tiny_model):
    app = make_app(project, tiny_model, steps=400)
    app.settings.max_tokens_block = 200  # 400 forward passes: long enough to cancel
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_until(pilot, lambda: app.engine is not None)
        app.editor.cursor_location = (2, 6)
        await pilot.press("ctrl+g")
        assert await wait_until(pilot, lambda: app.canvas.has_class("active"))
        await pilot.press("escape")
        assert await wait_until(pilot, lambda: not app.generating)
        assert app.request is None and app.editor.text == SOURCE


async def test_regenerate_and_cycle_candidates_then_reject(project, tiny_model):
    app = make_app(project, tiny_model)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_until(pilot, lambda: app.engine is not None)
        app.editor.cursor_location = (1, 0)
        await pilot.press("ctrl+g")
        assert await wait_until(pilot, lambda: app.request and len(app.request.candidates) == 1)
        await pilot.press("ctrl+r")
        assert await wait_until(pilot, lambda: len(app.request.candidates) == 2)
        assert app.request.shown == 1
        await pilot.press("ctrl+n")
        assert app.request.shown == 0
        await pilot.press("escape")
        assert app.request is None and app.editor.text == SOURCE


async def test_save_is_explicit_and_keeps_a_backup(project, tiny_model):
    app = make_app(project, tiny_model)
    async with app.run_test(size=(100, 30)) as pilot:
        app.editor.insert("# edited\n", (0, 0))
        await pilot.pause()
        assert (project / "add.py").read_text() == SOURCE  # never saved silently
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert (project / "add.py").read_text() == "# edited\n" + SOURCE
        assert (project / "add.py.unmask-backup").read_text() == SOURCE
        app.editor.insert("# again\n", (0, 0))
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert (project / "add.py.unmask-backup").read_text() == SOURCE  # first one kept
        assert not app.dirty


async def test_quit_with_unsaved_changes_asks_twice(project, tiny_model):
    app = make_app(project, tiny_model)
    async with app.run_test(size=(100, 30)) as pilot:
        app.editor.insert("x", (0, 0))
        await pilot.pause()
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and app.return_code is None  # the first one only warned
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code == 0  # the second one quit
    assert (project / "add.py").read_text() == SOURCE  # quitting did not save


async def test_missing_model_is_a_notification_not_a_crash(project, tmp_path):
    app = UnmaskApp(project / "add.py", AssistantSettings(model=str(tmp_path / "nope")),
                    persist_settings=False)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_until(pilot, lambda: app.status.model == "no model")
        await pilot.press("ctrl+g")  # asking without a model: a warning, still running
        await pilot.pause()
        assert app.is_running and app.request is None
        messages = [n.message for n in app._notifications]
        assert any("nope" in m and "not found" in m for m in messages)  # the load error, shown
        assert any("not loaded" in m for m in messages)  # and why ctrl+g did nothing


async def test_settings_panel_applies_values(project, tiny_model):
    app = make_app(project, tiny_model)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("#temperature").value = "0.5"
        app.screen.query_one("#steps").value = "8"
        await pilot.click("#save")
        await pilot.pause()
        assert app.settings.temperature == 0.5 and app.settings.steps == 8


def _ready(app):
    async def run_before(pilot):
        assert await wait_until(pilot, lambda: app.engine is not None, tries=1200)
        app.editor.cursor_blink = False  # a blinking cursor makes pictures differ
        app.set_focus(None)
        await pilot.pause(0.2)
    return run_before


def test_snapshot_main_screen(project, tiny_model, snap_compare):
    app = make_app(project, tiny_model)
    assert snap_compare(app, terminal_size=(100, 28), run_before=_ready(app))


def test_snapshot_candidate(project, tiny_model, snap_compare):
    app = make_app(project, tiny_model)

    async def run_before(pilot):
        await _ready(app)(pilot)
        app.editor.cursor_location = (2, 6)
        await pilot.press("ctrl+g")
        assert await wait_until(pilot, lambda: app.request and app.request.candidates, tries=1200)
        app.status.last_run = "12 tok in 12 steps"  # timings vary; keep the snapshot stable
        app.set_focus(None)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(100, 28), run_before=run_before)


def test_snapshot_settings(project, tiny_model, snap_compare):
    app = make_app(project, tiny_model)

    async def run_before(pilot):
        await _ready(app)(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        app.screen.query_one("#model").value = "tiny-test-model"  # the real path is a tmp dir
        app.screen.query_one("#save").focus()  # no blinking input cursor in the picture
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(100, 40), run_before=run_before)
