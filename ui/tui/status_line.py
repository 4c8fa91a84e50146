"""One line: model, device, and the last run's tokens/s and steps."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    model = reactive("loading model…")
    last_run = reactive("")

    def render(self) -> str:
        return f"{self.model}   {self.last_run}".rstrip()
