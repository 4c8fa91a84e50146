"""Settings panel: model, back end, steps, algorithm, temperature, max tokens; saved on apply."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from assistant.settings import AssistantSettings
from engine.choices import ALGORITHMS, BACKENDS
from engine.errors import UnmaskError

MODEL_DEFAULT = "model default"


class SettingsScreen(ModalScreen[AssistantSettings | None]):
    BINDINGS = [("escape", "dismiss(None)", "Close")]

    def __init__(self, settings: AssistantSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings"):
            yield Label("Model (folder, models/ name or HF repo id; empty = embedded)")
            yield Input(value=s.model or "", id="model")
            yield Label("Back end")
            yield Select([(b, b) for b in BACKENDS], value=s.backend,
                         id="backend", allow_blank=False)
            yield Label("Steps for a full canvas (empty = one token per step)")
            yield Input(value="" if s.steps is None else str(s.steps), id="steps",
                        type="integer")
            yield Label("Algorithm")
            yield Select([(a, a) for a in (MODEL_DEFAULT, *ALGORITHMS)],
                         value=s.alg or MODEL_DEFAULT, id="alg", allow_blank=False)
            yield Label("Temperature (empty = the model's default)")
            yield Input(value="" if s.temperature is None else str(s.temperature),
                        id="temperature", type="number")
            yield Label("Max tokens (block)")
            yield Input(value=str(s.max_tokens_block), id="max_tokens_block", type="integer")
            with Horizontal(id="settings-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        q = self.query_one
        try:
            steps = q("#steps", Input).value.strip()
            temperature = q("#temperature", Input).value.strip()
            alg = q("#alg", Select).value
            new = self.settings.updated({
                "model": q("#model", Input).value.strip() or None,
                "backend": q("#backend", Select).value,
                "alg": None if alg == MODEL_DEFAULT else alg,
                "steps": int(steps) if steps else None,
                "temperature": float(temperature) if temperature else None,
                "max_tokens_block": int(q("#max_tokens_block", Input).value or 96)})
        except (ValueError, UnmaskError) as err:
            self.notify(str(err), severity="error")
            return
        self.dismiss(new)
