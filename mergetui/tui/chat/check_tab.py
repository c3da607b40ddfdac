"""The Quick check tab (F8): the perplexity of each model on a text (the bundled sample, or a
file named); a broken merge scores far above its parents. Scored in a thread worker, a row each."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Static

from mergetui.errors import CancelledError, UserError
from mergetui.tui.chat.messages import CheckRow, WorkEnded
from mergetui.tui.chat.tab import SessionTab
from mergetui.tui.dialogs.paths import PathInput


class CheckTab(SessionTab):
    """A text to score, and a table of each model's perplexity."""

    def __init__(self) -> None:
        super().__init__("Quick check [dim]F8[/]", id="check")
        self.check_results: list[Any] = []  # a PerplexityResult per row, once scored

    def compose(self) -> ComposeResult:
        yield Static(
            "Perplexity of each model on a text (lower is better; a broken merge scores "
            "far above its parents). Enter runs; a file path replaces the bundled sample.",
            classes="hint",
            id="check-help",
        )
        with Horizontal(id="check-row"):
            yield PathInput(
                placeholder="text file (empty: the bundled sample)",
                id="check-file",
                compact=True,
            )
            yield Button("Run", id="check-run", compact=True)
        yield DataTable(id="check-table", cursor_type="row")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("model", "perplexity", "tokens", "time", "status")

    @on(Input.Submitted, "#check-file")
    @on(Button.Pressed, "#check-run")
    def quick_check(self) -> None:
        chat = self.chat
        if not chat.can_start():
            return
        from mergetui.chat.perplexity import read_text, sample_text

        name = self.query_one("#check-file", Input).value.strip()
        try:
            text, text_name = read_text(name) if name else sample_text()
        except UserError as exc:
            self.notify(str(exc), title="No text", severity="error")
            return
        chat.refresh_sources()
        if not chat.compare_sources:
            self.notify("no models to check: load one or open a recipe", severity="warning")
            return
        table = self.query_one(DataTable)
        table.clear()
        for model_name, _ in chat.compare_sources:
            table.add_row(model_name, "", "", "", "waiting")
        self.check_results = [None] * len(chat.compare_sources)
        stop = chat.begin("check", f"[b]scoring[/] on the {escape(text_name)}… esc stops")
        self._check(list(chat.compare_sources), text, text_name, stop)

    @work(thread=True, exclusive=True, group="chat-check", exit_on_error=False)
    def _check(self, sources: list[tuple[str, str]], text: str, text_name: str, stop: Any) -> None:
        chat = self.chat
        turns = chat.models_in_turn(sources, chat.keep_all(sources), stop, self._post_status)
        for index, loaded in turns:
            self._score(index, loaded, text, text_name, stop)
        self.post_message(WorkEnded("check"))

    def _score(self, index: int, loaded: Any, text: str, text_name: str, stop: Any) -> None:
        """One model's perplexity into its row (in the worker's thread)."""
        from mergetui.chat.perplexity import perplexity

        try:
            self.post_message(CheckRow(index, "scoring…"))
            result = perplexity(
                loaded,
                text,
                text_name=text_name,
                cancel=stop,
                on_progress=lambda f: self.post_message(CheckRow(index, f"scoring {f:.0%}")),
            )
            self.post_message(CheckRow(index, "done", result))
        except CancelledError:
            self.post_message(CheckRow(index, "stopped"))
        except Exception as exc:
            self.post_message(CheckRow(index, f"failed: {exc}"))

    def _post_status(self, row: int, status: str) -> None:
        self.post_message(CheckRow(row, status))

    @on(CheckRow)
    def check_row(self, event: CheckRow) -> None:
        table = self.query_one(DataTable)
        if event.row >= table.row_count:
            return
        if event.result is not None:
            result = event.result
            self.check_results[event.row] = result
            table.update_cell_at((event.row, 1), f"{result.perplexity:.2f}", update_width=True)
            table.update_cell_at((event.row, 2), str(result.tokens), update_width=True)
            table.update_cell_at((event.row, 3), f"{result.seconds:.1f} s", update_width=True)
        table.update_cell_at((event.row, 4), event.status, update_width=True)
