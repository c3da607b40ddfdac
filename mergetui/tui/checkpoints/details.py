"""The Checkpoints screen's details pane: the highlighted checkpoint, or the compatibility report.

Details are read in a worker once the cursor has rested on a row (DETAILS_DELAY) or at once with
enter, and kept per row; the recipe's compatibility report (`k`) stays until the cursor moves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.errors import UserError
from mergetui.tui.checkpoints.messages import DetailsRead
from mergetui.tui.checkpoints.text import compat_text, details_text, empty_text, summary_text
from mergetui.tui.workers import reply

DETAILS_DELAY = 0.35  # seconds the cursor rests on a row before its details are read
CHECK_TITLE = "[b]Compatibility of the recipe's models[/]"


class DetailsPane(VerticalScroll):
    """The text below the list; `details` keeps what was read for each row key."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.details: dict[str, str] = {}  # row key -> rendered details
        self.showing_check = False
        self.check_report: Any = None
        self._row: CheckpointRow | None = None  # the row the list has highlighted
        self._timer: Any = None
        self._loading_key: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="ck-details-text")

    def _update(self, text: str) -> None:
        self.query_one("#ck-details-text", Static).update(text)

    def show_row(self, row: CheckpointRow | None, scanning: bool = False) -> None:
        """The list's highlighted row: its details if read, else its summary until the cursor
        rests on it. The compatibility report stays until the cursor moves (`leave_check`)."""
        self._row = row
        if self.showing_check:
            return
        if row is None:
            self._update(empty_text(scanning))
            return
        if row.key in self.details:
            self._update(self.details[row.key])
            return
        self._update(summary_text(row) + "\n[dim]reading details…[/]")
        self._stop_timer()
        self._timer = self.set_timer(DETAILS_DELAY, self._read)

    def leave_check(self) -> None:
        self.showing_check = False

    def read_now(self, row: CheckpointRow | None) -> None:
        """Enter on a row: its details now, even over the compatibility report."""
        self._row = row
        self.showing_check = False
        self._read()

    def forget(self, *, ending: str = "") -> None:
        """Read rows again (all of them, or those whose key ends with `ending`)."""
        for key in [k for k in self.details if k.endswith(ending)]:
            del self.details[key]

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    def _read(self) -> None:
        if self.showing_check:
            return
        row = self._row
        if row is None or row.key in self.details:
            if row is not None:
                self._update(self.details[row.key])
            return
        if row.key == self._loading_key:  # already being read (the timer, then enter)
            return
        self._loading_key = row.key
        self._load(row)

    @work(thread=True, exclusive=True, group="ck-details", exit_on_error=False)
    def _load(self, row: CheckpointRow) -> None:
        try:
            text = details_text(row)
        except UserError as exc:
            text = summary_text(row) + f"\n[b $error]{escape(str(exc))}[/]"
        except Exception as exc:
            text = summary_text(row) + f"\n[b $error]could not read it: {escape(str(exc))}[/]"
        reply(self, self._loaded, row.key, text)

    def _loaded(self, key: str, text: str) -> None:
        if not self.is_mounted:
            return
        self.details[key] = text
        if key == self._loading_key:
            self._loading_key = None
        self.post_message(DetailsRead(key))
        if self._row is not None and self._row.key == key and not self.showing_check:
            self._update(text)

    # -- the recipe's compatibility ----------------------------------------------------------

    def check(self, recipe: Any, base_dir: Path) -> None:
        """Compare the recipe's models (headers only, in a worker) and show the report."""
        self._stop_timer()
        self.showing_check = True
        self._update(f"{CHECK_TITLE}\n[dim]reading headers…[/]")
        self._check(copy.deepcopy(recipe), base_dir)

    @work(thread=True, exclusive=True, group="ck-check", exit_on_error=False)
    def _check(self, recipe: Any, base_dir: Path) -> None:
        from mergetui.checkpoints.hub import is_offline
        from mergetui.recipe.models_compat import check_recipe_models

        report = check_recipe_models(recipe, base_dir, remote=not is_offline())
        reply(self, self._checked, report)

    def _checked(self, report: Any) -> None:
        if not self.is_mounted:
            return
        self.check_report = report
        self.showing_check = True
        self._update(compat_text(report))
        if report.ok:
            self.notify("the recipe's models fit together", timeout=3)
        else:
            self.notify(
                f"{len(report.problems)} problem(s), {len(report.skipped)} model(s) not read",
                severity="warning",
                timeout=4,
            )
