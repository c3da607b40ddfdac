"""A one-line status bar that fits its width instead of being cut off at the right edge.

A screen's status is a few parts joined by " │ ", most important first. At 80 columns they may not
all fit: whole parts are dropped from the end, and the last part that stays is shortened with an
ellipsis when even it does not fit, so what is shown is always readable and the first part (the
state: valid, errors, how many checkpoints) is always there.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.widgets import Static

SEPARATOR = " │ "


def fit_parts(parts: Sequence[str], width: int) -> Content:
    """`parts` (Textual markup, most important first) joined by " │ " in at most `width` cells:
    trailing parts are left out until the rest fits, then the last one kept is cut with "…"."""
    contents = [Content.from_markup(part) for part in parts if part]
    separator = Content(SEPARATOR)
    if width <= 0:
        return separator.join(contents)
    while contents:
        line = separator.join(contents)
        if line.cell_length <= width:
            return line
        head = separator.join(contents[:-1]) + separator if len(contents) > 1 else Content("")
        room = width - head.cell_length
        if room >= 12 or len(contents) == 1:
            return head + contents[-1].truncate(max(1, room), ellipsis=True)
        contents.pop()
    return Content("")


class StatusLine(Static):
    """The status bar of a screen: `show(parts)` and it fits them to its width, now and on resize."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._parts: list[str] = []

    def show(self, parts: Sequence[str]) -> None:
        """Show these parts (Textual markup, most important first)."""
        self._parts = list(parts)
        self._fit()

    @property
    def full_text(self) -> str:
        """Every part, as plain text, whether or not it fits (for tests and screen readers)."""
        return fit_parts(self._parts, 0).plain

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        self.update(fit_parts(self._parts, self.content_size.width))
