"""The editor pane: Textual's TextArea, where Tab accepts a pending suggestion (else indents)."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea


class CodeEditor(TextArea):
    class AcceptRequested(Message):
        """Tab pressed while a candidate is waiting to be accepted."""

    suggestion_pending = False

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "tab" and self.suggestion_pending:
            event.stop()
            event.prevent_default()
            self.post_message(self.AcceptRequested())
            return
        await super()._on_key(event)
