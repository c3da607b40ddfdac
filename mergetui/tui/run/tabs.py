"""The Run screen's tabs: the Log of the current run, and the History of past runs.

A past run's recipe reopens from the History tab (enter, or `o`): it replaces the open recipe, after
the usual question about unsaved changes.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, RichLog, Static, TabPane

from mergetui.errors import UserError
from mergetui.tui.paths_text import short_path
from mergetui.tui.run.progress import format_duration

OUTCOME_STYLES = {"finished": "green", "failed": "red", "cancelled": "yellow"}


class LogTab(TabPane):
    """What the merge is doing: its plan, notes, files written and how it ended."""

    def __init__(self) -> None:
        super().__init__("Log [dim]F6[/]", id="log")

    def compose(self) -> ComposeResult:
        yield RichLog(id="run-log", markup=True, wrap=True, max_lines=2000)

    def say(self, text: str, style: str = "") -> None:
        """One line of plain text (never read as markup), in a rich style."""
        line = escape(text)
        self.query_one(RichLog).write(f"[{style}]{line}[/]" if style else line)

    def clear(self) -> None:
        self.query_one(RichLog).clear()


class HistoryTab(TabPane):
    """Past runs, newest first; the selected one's recipe can be reopened."""

    def __init__(self) -> None:
        super().__init__("History [dim]F7[/]", id="history")
        self.records: list[Any] = []  # newest first, as listed

    def compose(self) -> ComposeResult:
        # The reopen key is not in the footer (it would not fit at 80 columns): say it here.
        yield Static(
            "newest first · [b]enter[/] or [b]o[/] reopens the selected run's recipe",
            id="run-history-hint",
            classes="hint",
        )
        yield DataTable(id="run-history", cursor_type="row", zebra_stripes=True)

    def load(self) -> None:
        """Read the history again and list it."""
        from mergetui.merge.history import load_history

        self.records = list(reversed(load_history()))
        table = self.query_one(DataTable)
        table.clear()
        if not table.columns:
            table.add_columns("when", "recipe", "method", "outcome", "time", "output")
        for record in self.records:
            table.add_row(
                time.strftime("%m-%d %H:%M", time.localtime(record.started_at)),
                record.recipe_name,
                record.method,
                Text(record.outcome, style=OUTCOME_STYLES[record.outcome]),
                format_duration(record.seconds),
                short_path(record.output_dir),
                key=record.id,
            )

    def selected(self) -> Any:
        """The highlighted run's record, or None when there are none."""
        table = self.query_one(DataTable)
        if not self.records or table.cursor_row is None:
            return None
        row = min(max(table.cursor_row, 0), len(self.records) - 1)
        return self.records[row]

    def reopen_selected(self) -> None:
        """Replace the open recipe with the selected run's (after the unsaved-changes question)."""
        record = self.selected()
        if record is None:
            self.notify("no past runs yet", severity="warning")
            return
        self.app._after_unsaved_check(partial(self._reopen, record))

    def _reopen(self, record: Any) -> None:
        from mergetui.editing.document import RecipeDocument

        moe = None
        try:
            if record.method == "moe":  # an MoE assembly keeps its recipe as a [moe] table
                from mergetui.recipe.model import Recipe
                from mergetui.recipe.moe import loads_moe

                moe = loads_moe(record.recipe_toml, "toml", record.recipe_path or "history")
                recipe = Recipe(method="moe")
            else:
                recipe = record.recipe()
        except UserError as exc:
            self.notify(str(exc), title="Not reopened", severity="error")
            return
        origin = Path(record.recipe_path) if record.recipe_path else None
        self.app.document = RecipeDocument(
            recipe, path=None, origin=origin, origin_note="from history", moe=moe
        )
        self.app.document_replaced()
        self.app.switch_mode("recipe")
        self.notify(
            f"reopened the recipe of the run of {record.when()} "
            + ("(an MoE recipe: read-only)" if moe is not None else "(save it with ctrl+s)"),
            timeout=5,
        )
