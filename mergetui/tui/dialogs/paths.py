"""Ask for one line of text; a path is completed with tab as in a shell (PathInput).

The file-system completion (`PathSuggester`) serves every path prompt of the app: these dialogs,
the Chat screen's load dialog and its Quick check's text file.
"""

from __future__ import annotations

import os
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input, Static

from mergetui.tui.dialogs.base import DialogScreen


class PathSuggester(Suggester):
    """Completes file-system paths as you type (the rest of the first matching entry)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        directory, prefix = os.path.split(os.path.expanduser(value))
        folder = Path(directory) if directory else Path(".")
        try:
            names = sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix))
        except OSError:
            return None
        names = [n for n in names if not n.startswith(".") or prefix.startswith(".")]
        if not names or names[0] == prefix:
            return None
        completed = names[0]
        if (folder / completed).is_dir():
            completed += os.sep
        return value + completed[len(prefix) :]


class PathInput(Input):
    """An input with path completion: tab (or the right arrow) accepts the completion shown, as in a
    shell; with no completion showing, tab moves on to the next field as usual."""

    BINDINGS = [Binding("tab", "complete_path", "Complete the path", show=False)]

    def __init__(self, value: str = "", **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(), **kwargs)

    def action_complete_path(self) -> None:
        if self.cursor_at_end and len(self._suggestion) > len(self.value):
            self.value = self._suggestion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()


class TextPrompt(DialogScreen):
    """Ask for one line of text (a path, a number); answers the text, or None."""

    def __init__(
        self,
        title: str,
        initial: str = "",
        *,
        hint: str = "",
        paths: bool = False,
        placeholder: str = "",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.initial = initial
        self.hint = hint
        self.paths = paths
        self.placeholder = placeholder

    def compose_body(self) -> ComposeResult:
        if self.paths:
            yield PathInput(self.initial, placeholder=self.placeholder, id="answer")
        else:
            yield Input(self.initial, placeholder=self.placeholder, id="answer")
        hint = self.hint or "enter to confirm · escape to cancel"
        if self.paths:
            hint += " · tab completes"
        yield Static(hint, classes="hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(value or None)
