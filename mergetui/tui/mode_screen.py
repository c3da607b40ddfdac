"""The base of the app's four screens (its modes): switching between them without a full restyle.

Textual re-applies the whole stylesheet to every widget of a screen each time `switch_mode` resumes
it (a `ScreenResume` with `refresh_styles`), which on the Recipe screen's grid and forms costs more
than the rest of a key press together (~100 ms on the 2-core development machine). The styles of
a suspended screen only go stale when the theme changes (or the app's CSS is reloaded), so the
restyle is kept for that case and skipped otherwise.
"""

from __future__ import annotations

from textual import events
from textual.screen import Screen


class ModeScreen(Screen):
    """A screen reached with F2..F5; restyled on resume only when the theme changed."""

    _styled_for: tuple[str, int] | None = None

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        # Runs before Screen._on_screen_resume (Textual calls each class's handler, subclass first).
        styled_for = (self.app.theme, id(self.app.stylesheet))
        if self._styled_for == styled_for:
            event.refresh_styles = False
        self._styled_for = styled_for
