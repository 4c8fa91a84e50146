"""The live denoising canvas: masked slots as placeholders, tokens coloured by decoding step."""

from __future__ import annotations

from textual.widgets import Static

from assistant.render import frame_pieces, rich_text


class DenoiseView(Static):
    """Shows the current frame of a generation and, when done, the candidate to accept."""

    def show_frame(self, engine, frame, title: str) -> None:
        self.add_class("active")
        self.border_title = f"{title} · step {frame.step + 1}/{frame.steps}"
        self.update(rich_text(frame_pieces(engine, frame), frame.steps))

    def show_candidate(self, engine, frame, title: str, index: int, count: int) -> None:
        self.add_class("active")
        self.border_title = f"{title} · candidate {index + 1}/{count}"
        self.border_subtitle = "tab accept · esc reject · ctrl+r regenerate · ctrl+n next"
        self.update(rich_text(frame_pieces(engine, frame), frame.steps))

    def hide(self) -> None:
        self.remove_class("active")
        self.border_subtitle = ""
        self.update("")
