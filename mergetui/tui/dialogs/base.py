"""The frame every dialog shares: a centred box with a title; escape cancels.

Callers use `push_screen(dialog, callback)` and never wait on the UI thread: a dialog answers
through `dismiss` (None when cancelled with escape).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label


class DialogScreen(ModalScreen):
    """A centred box; escape cancels. A subclass names its `title_text` and composes the rest of
    the box in `compose_body` (or composes the whole box itself)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    DialogScreen { align: center middle; }
    DialogScreen > .dialog {
        width: 76; max-width: 96%; height: auto; max-height: 92%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    DialogScreen .dialog-title { text-style: bold; color: $text-accent; margin-bottom: 1; }
    DialogScreen .hint { color: $text-muted; }
    DialogScreen .error { color: $text-error; }
    DialogScreen Input { margin-bottom: 0; }
    DialogScreen Input.-textual-compact { background: $panel; }
    DialogScreen Input.-textual-compact:focus { background: $boost; text-style: bold; }
    DialogScreen .buttons { height: auto; align-horizontal: right; margin-top: 1; }
    DialogScreen .buttons Button { margin-left: 1; min-width: 10; }
    """

    title_text = ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield from self.compose_body()

    def compose_body(self) -> ComposeResult:
        """What the box holds below its title."""
        yield from ()

    def action_cancel(self) -> None:
        self.dismiss(None)
