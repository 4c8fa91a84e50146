"""Turning the engine's frames into coloured canvases: shared by the CLI, TUI and web demo.

A slot still masked is drawn as a placeholder; a decoded token is coloured by the step it was
decoded at (early = blue, late = red), so the diffusion order is visible at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass

MASK_GLYPH = "░"


def step_colour(step: int, steps: int) -> str:
    """Hex colour for a decoding step on a blue -> green -> red ramp."""
    f = 0.0 if steps <= 1 else step / (steps - 1)
    if f < 0.5:
        r, g, b = 0, int(80 + 350 * f), int(255 * (1 - 2 * f) + 60 * 2 * f)
    else:
        r, g, b = int(255 * (f - 0.5) * 2), int(255 * (1 - f) * 2), 60
    return f"#{min(r, 255):02x}{min(g, 255):02x}{min(b, 255):02x}"


@dataclass
class Piece:
    text: str
    step: int
    """-1 while masked."""


def canvas_pieces(token_texts: list[str], order: list[int], mask_id_slots: list[bool],
                  hidden: set[int] | None = None) -> list[Piece]:
    """One piece per canvas slot: its text (placeholder if masked) and decoding step."""
    pieces = []
    for i, (text, step, masked) in enumerate(zip(token_texts, order, mask_id_slots)):
        if masked:
            pieces.append(Piece(MASK_GLYPH, -1))
        elif hidden and i in hidden:
            pieces.append(Piece("", step))
        else:
            pieces.append(Piece(text, step))
    return pieces


def frame_pieces(engine, frame) -> list[Piece]:
    """Pieces for a Frame: pads/eos decoded into unused slots are drawn as nothing."""
    texts = engine.tokenizer.token_texts(frame.canvas)
    masked = [t == engine.mask_id for t in frame.canvas]
    hidden = {i for i, t in enumerate(frame.canvas) if t in engine.end_ids}
    return canvas_pieces(texts, frame.order, masked, hidden)


def rich_text(pieces: list[Piece], steps: int, prefix_tail: str = "", suffix_head: str = ""):
    from rich.text import Text

    out = Text(prefix_tail, style="dim")
    for p in pieces:
        out.append(p.text, style="grey50" if p.step < 0 else step_colour(p.step, steps))
    out.append(suffix_head, style="dim")
    return out
