"""The one-line strip the Checkpoints screen shows while a job of its own runs (a download, an
extraction): a progress bar and a label, hidden when nothing runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar


class ProgressStrip(Horizontal):
    """A bar and a label; subclasses name their ids and say what their job's progress means."""

    BAR_ID = ""
    LABEL_ID = ""

    def compose(self) -> ComposeResult:
        yield ProgressBar(id=self.BAR_ID, show_eta=False)
        yield Label(id=self.LABEL_ID)

    def on_mount(self) -> None:
        self.display = False

    def say(self, text: str) -> None:
        self.query_one(f"#{self.LABEL_ID}", Label).update(text)

    def start(self, text: str) -> None:
        """Shown, with a bar that moves until the job knows its size."""
        self.display = True
        self.say(text)
        self.query_one(f"#{self.BAR_ID}", ProgressBar).update(total=None, progress=0)

    def advance(self, done: int, total: int, text: str) -> None:
        self.query_one(f"#{self.BAR_ID}", ProgressBar).update(total=max(total, 1), progress=done)
        self.say(text)

    def end(self) -> None:
        self.display = False
