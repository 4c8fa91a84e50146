"""``unmask tui [PATH]``: a Textual app for coding sessions with live diffusion.

A file tree and a Python editor; ask the model to generate the body of the function under the
cursor, fill the selection, or answer a free prompt. The canvas streams in live, every slot
coloured by the step it was decoded at. Model loading, settings and cancellable streaming are the
language server's (``assistant.completion.CompletionService``); generation runs in an exclusive
thread worker (Escape cancels between steps); accepting inserts the candidate as one undoable
edit; saving is explicit and the first overwrite of a file keeps a backup next to it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DirectoryTree, Footer, Header, Input, TextArea

from assistant.completion import CompletionService, Job
from assistant.edits import EditPlan, offset_of, plan_body, plan_selection
from assistant.settings import AssistantSettings, save_settings
from engine.errors import UnmaskError
from ui.tui.code_editor import CodeEditor
from ui.tui.denoise_view import DenoiseView
from ui.tui.settings_screen import SettingsScreen
from ui.tui.status_line import StatusLine


@dataclass
class Request:
    plan: EditPlan
    source: str
    """The editor text when asked; a candidate is only accepted into the same text."""
    prompt: str | None = None
    """Free prompt (generate) instead of an infill."""
    candidates: list = field(default_factory=list)
    """(completion text, final frame) per run."""
    shown: int = 0


class UnmaskApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "Unmask"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+g", "generate_body", "Body", priority=True),
        Binding("ctrl+e", "fill_selection", "Fill sel.", priority=True),
        Binding("ctrl+k", "prompt", "Prompt", priority=True),
        Binding("ctrl+t", "accept", "Accept (tab)", priority=True),
        Binding("escape", "cancel", "Cancel/Reject", priority=True),
        Binding("ctrl+r", "regenerate", "Regen.", priority=True),
        Binding("ctrl+n", "next_candidate", "Next", priority=True),
        Binding("ctrl+o", "settings", "Settings", priority=True),
        Binding("ctrl+q", "quit_app", "Quit", priority=True),
    ]

    def __init__(self, path: Path | None = None, settings: AssistantSettings | None = None,
                 persist_settings: bool = True) -> None:
        super().__init__()
        self.path = (path or Path.cwd()).resolve()
        self.settings = settings or AssistantSettings()
        self.persist_settings = persist_settings
        self.service = CompletionService(self.settings, self._on_status)
        self.job: Job | None = None
        self.file: Path | None = None
        self.saved_text = ""
        self.backed_up: set[Path] = set()
        self.request: Request | None = None
        self.generating = False
        self._quit_armed = False

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        root = self.path if self.path.is_dir() else self.path.parent
        with Horizontal(id="main"):
            yield DirectoryTree(root, id="tree")
            yield CodeEditor.code_editor("", language="python", id="editor")
        yield DenoiseView(id="canvas")
        yield Input(placeholder="Ask the model (enter to run, esc to close)", id="prompt")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        if self.path.is_file():
            self.open_file(self.path)
        self.service.start()
        self.service.repo.start([self.path if self.path.is_dir() else self.path.parent])

    @property
    def engine(self):
        """The loaded engine, or None while loading or after a failed load."""
        return self.service.holder.engine

    @property
    def editor(self) -> CodeEditor:
        return self.query_one("#editor", CodeEditor)

    @property
    def canvas(self) -> DenoiseView:
        return self.query_one("#canvas", DenoiseView)

    @property
    def status(self) -> StatusLine:
        return self.query_one("#status", StatusLine)

    # -- model -------------------------------------------------------------------------------
    def _on_status(self, status: str, detail: str) -> None:
        """Called from the service's loading thread."""
        try:
            self.call_from_thread(self._show_status, status, detail)
        except RuntimeError:  # the app has already exited
            pass

    def _show_status(self, status: str, detail: str) -> None:
        engine = self.engine
        if status == "loading":
            self.status.model = "loading model…"
        elif status == "ready" and engine is not None:
            self.status.model = f"{engine.name} · {engine.backend}/{engine.device.type} " \
                                f"{engine.dtype}"
        elif status == "error":
            self.status.model = "no model"
            self.notify(detail, title="Model not loaded", severity="error", timeout=10)

    # -- files -------------------------------------------------------------------------------
    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        if self.dirty and event.path != self.file:
            self.notify("Unsaved changes: ctrl+s to save first", severity="warning")
            return
        self.open_file(event.path)

    def open_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            self.notify(f"Cannot open {path.name}: {err}", severity="error")
            return
        self.file = path
        self.saved_text = text
        self.editor.load_text(text)
        self.editor.language = "python" if path.suffix in (".py", ".pyi") else None
        self.sub_title = self.display_name
        self.editor.focus()

    @property
    def display_name(self) -> str:
        if self.file is None:
            return "untitled"
        root = self.path if self.path.is_dir() else self.path.parent
        try:
            return str(self.file.relative_to(root))
        except ValueError:
            return str(self.file)

    @property
    def dirty(self) -> bool:
        return self.is_mounted and self.editor.text != self.saved_text

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._quit_armed = False
        self.sub_title = f"{self.display_name}{' •' if self.dirty else ''}"

    def action_save(self) -> None:
        if self.file is None:
            self.notify("No file open", severity="warning")
            return
        try:
            if self.file.exists() and self.file not in self.backed_up:
                backup = backup_path(self.file)
                shutil.copy2(self.file, backup)
                self.backed_up.add(self.file)
                self.notify(f"Backup of the original: {backup.name}")
            tmp = self.file.with_name(f".{self.file.name}.unmask-tmp")
            tmp.write_text(self.editor.text, encoding="utf-8")
            os.replace(tmp, self.file)
        except OSError as err:
            self.notify(f"Not saved: {err}", severity="error")
            return
        self.saved_text = self.editor.text
        self.sub_title = self.display_name
        self.service.repo.saved(self.file)
        self.notify(f"Saved {self.file.name}")

    def action_quit_app(self) -> None:
        if self.dirty and not self._quit_armed:
            self._quit_armed = True
            self.notify("Unsaved changes: ctrl+s to save, ctrl+q again to quit without saving",
                        severity="warning")
            return
        self.exit()

    # -- asking the model ----------------------------------------------------------------------
    def _model_ready(self) -> bool:
        if self.engine is None:
            self.notify("The model is not loaded yet", severity="warning")
            return False
        return True

    def action_generate_body(self) -> None:
        if not self._model_ready():
            return
        text = self.editor.text
        try:
            plan = plan_body(text, self.editor.cursor_location[0])
        except UnmaskError as err:
            self.notify(str(err), severity="error")
            return
        if plan is None:
            self.notify("Put the cursor in a function whose body is empty, pass or ...",
                        severity="warning")
            return
        self.start(Request(plan, text))

    def action_fill_selection(self) -> None:
        if not self._model_ready():
            return
        sel = self.editor.selection
        if sel.start == sel.end:
            self.notify("Select the code to fill first", severity="warning")
            return
        text = self.editor.text
        a, b = sorted([sel.start, sel.end])
        self.start(Request(plan_selection(text, offset_of(text, *a), offset_of(text, *b)), text))

    def action_prompt(self) -> None:
        box = self.query_one("#prompt", Input)
        box.add_class("active")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt" or not event.value.strip() or not self._model_ready():
            return
        event.input.remove_class("active")
        text = self.editor.text
        at = offset_of(text, *self.editor.cursor_location)
        plan = EditPlan(at, at, "", "", "prompt")
        self.start(Request(plan, text, prompt=event.value))
        event.input.value = ""
        self.editor.focus()

    def start(self, request: Request) -> None:
        self.request = request
        self.generating = True
        self.run_generation(request, seed=len(request.candidates))

    @work(thread=True, exclusive=True, group="generate")
    def run_generation(self, request: Request, seed: int) -> None:
        engine = self.engine
        job = self.job = Job("tui")
        last = []

        def on_frame(frame) -> None:
            last[:] = [frame]
            self.call_from_thread(self.canvas.show_frame, engine, frame, request.plan.title)

        try:
            if request.prompt is not None:
                result = self.service.generate(job, request.prompt, seed, on_frame)
            else:
                result = self.service.fill(job, request.plan.prefix, request.plan.suffix, seed,
                                           on_frame, self.file)
        except UnmaskError as err:
            self.call_from_thread(self._failed, str(err))
            return
        if result is None and job.cancel.is_set():
            self.call_from_thread(self._cancelled)
        elif result is None:
            self.call_from_thread(self._failed, job.error or "the model is not loaded")
        else:
            self.call_from_thread(self._done, request, result, last[0] if last else None)

    def _done(self, request: Request, result, frame) -> None:
        self.generating = False
        if result.extra.get("note"):
            self.notify(result.extra["note"], severity="information")
        text = request.plan.finish(result.completion)
        request.candidates.append((text, frame))
        request.shown = len(request.candidates) - 1
        self.status.last_run = (f"{result.canvas_len} tok in {result.steps} steps · "
                                f"{result.elapsed_s:.2f}s · {result.tokens_per_s:.0f} tok/s")
        self._show_candidate()

    def _show_candidate(self) -> None:
        req = self.request
        if req is None or not req.candidates:
            return
        _, frame = req.candidates[req.shown]
        self.canvas.show_candidate(self.engine, frame, req.plan.title, req.shown,
                                   len(req.candidates))
        self.refresh_bindings()

    def _cancelled(self) -> None:
        self.generating = False
        if self.request is not None and not self.request.candidates:
            self.request = None
            self.canvas.hide()
        self.notify("Generation cancelled")
        self.refresh_bindings()

    def _failed(self, message: str) -> None:
        self.generating = False
        self.request = None
        self.canvas.hide()
        self.notify(message, severity="error")

    def on_code_editor_accept_requested(self, event: CodeEditor.AcceptRequested) -> None:
        self.action_accept()

    def refresh_bindings(self) -> None:
        super().refresh_bindings()
        if self.is_mounted:
            self.editor.suggestion_pending = self.request is not None and \
                bool(self.request.candidates) and not self.generating

    def check_action(self, action: str, parameters) -> bool | None:
        pending = self.request is not None and bool(self.request.candidates) and \
            not self.generating
        if action in ("accept", "next_candidate", "regenerate"):
            return pending
        if action == "cancel":
            return self.generating or pending or self.query_one("#prompt").has_class("active")
        return True

    def action_accept(self) -> None:
        req = self.request
        if req is None or not req.candidates:
            return
        if self.editor.text != req.source:
            self.notify("The file changed since you asked; regenerate", severity="warning")
            return
        text, _ = req.candidates[req.shown]
        doc = self.editor.document
        start = doc.get_location_from_index(req.plan.start)
        end = doc.get_location_from_index(req.plan.end)
        self.editor.replace(text, start, end)  # one undoable edit
        self.request = None
        self.canvas.hide()
        self.refresh_bindings()

    def action_cancel(self) -> None:
        prompt = self.query_one("#prompt", Input)
        if prompt.has_class("active"):
            prompt.remove_class("active")
            self.editor.focus()
        if self.generating:
            if self.job is not None:
                self.job.cancel.set()  # the service stops between two steps
            return
        self.request = None
        self.canvas.hide()
        self.refresh_bindings()

    def action_regenerate(self) -> None:
        if self.request is not None and not self.generating:
            self.generating = True
            self.refresh_bindings()
            self.run_generation(self.request, seed=len(self.request.candidates))

    def action_next_candidate(self) -> None:
        if self.request is not None and self.request.candidates:
            self.request.shown = (self.request.shown + 1) % len(self.request.candidates)
            self._show_candidate()

    def action_settings(self) -> None:
        def apply(new: AssistantSettings | None) -> None:
            if new is None:
                return
            self.settings = new
            if self.persist_settings:
                try:
                    self.notify(f"Settings saved to {save_settings(new)}")
                except OSError as err:
                    self.notify(f"Settings not saved: {err}", severity="error")
            self.service.reconfigure(new)  # reloads the model when model/back end/device change

        self.push_screen(SettingsScreen(self.settings), apply)


def backup_path(path: Path) -> Path:
    candidate = path.with_name(path.name + ".unmask-backup")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.unmask-backup.{n}")
        n += 1
    return candidate


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from assistant.settings import load_settings

    ap = argparse.ArgumentParser(prog="unmask tui")
    ap.add_argument("path", nargs="?", type=Path, default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    if args.path is not None and not args.path.exists():
        sys.stderr.write(f"unmask: error: {args.path} does not exist; pass a folder or a file\n")
        return 2
    try:
        settings = load_settings()
    except UnmaskError as err:
        sys.stderr.write(f"unmask: error: {err}\n")
        return 2
    if args.model:
        settings = replace(settings, model=args.model)
    UnmaskApp(args.path, settings).run()
    return 0
