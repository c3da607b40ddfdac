"""The grid's metric overlay: which metric is shown, the analysis behind it, and suggestions.

`InsightNote` is the line above the grid that says what the overlay shows (or how far the analysis
is); it also owns the overlay's state and runs the analysis in a worker, reading every tensor once
(or taking the cached result). The grid's keys o, O and S reach it through the Layers tab; when the
overlay changes it calls the tab's `refresh_grid`, which calls `sync` before the grid is rebuilt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.widgets import Static

from mergetui.editing.cells import GridError
from mergetui.editing.suggest import SUGGEST_STRENGTH, Suggestion
from mergetui.errors import CancelledError, UserError
from mergetui.merge.analysis import METRIC_TITLES, Analysis
from mergetui.tui.recipe.base import RecipePart
from mergetui.tui.recipe.facts import Facts
from mergetui.tui.recipe.insight_dialogs import (
    OUTPUT_SOURCE,
    PARENTS_SOURCE,
    MetricPicker,
    SuggestPreview,
)
from mergetui.tui.workers import reply

if TYPE_CHECKING:
    from mergetui.tui.recipe.grid import LayerGrid

Request = tuple[tuple, dict[str, Path], str | None]  # (cache key, models, base) of an analysis


class InsightNote(RecipePart, Static):
    """The overlay's note above the grid, and the overlay itself: on or off, the metric, the
    source (the parents, or the merge output), each source's last analysis, the running one."""

    DEFAULT_CSS = """
    InsightNote { height: 1; padding: 0 1; color: $text-muted; overflow: hidden; }
    """

    def __init__(
        self, grid: LayerGrid, facts: Facts, refresh_grid: Callable[[], None], *, id: str
    ) -> None:
        super().__init__(id=id)
        self.grid = grid
        self.facts = facts
        self._changed = refresh_grid  # rebuilds the grid, which calls `sync`
        self.overlay_on = False
        self.metric = "cosine"
        self.source = PARENTS_SOURCE
        self.insights: dict[str, tuple[tuple, Analysis]] = {}
        self.running: tuple | None = None  # the key of the analysis being computed
        self._cancel: threading.Event | None = None
        self._percent = -1
        self._suggest_pending = False

    def on_mount(self) -> None:
        self.display = False

    # -- the keys ------------------------------------------------------------------------------

    def toggle(self) -> None:
        """o: show the overlay, hide it, or cancel the analysis that is running."""
        if self.running is not None:
            self.cancel()
            return
        if self.overlay_on:
            self.overlay_on = False
            self._changed()
            self.show_note()
            return
        self._turn_on()

    def pick(self) -> None:
        """O: choose the metric (and whether of the parents or of the merge output)."""
        output = self._output_folder()
        current = (self.metric, self.source)
        picker = MetricPicker(current, str(output) if output is not None else None)
        self.app.push_screen(picker, self._picked)

    def _picked(self, choice: tuple[str, str] | None) -> None:
        self.grid.focus()
        if choice is None:
            return
        self.metric, self.source = choice
        self._turn_on()

    def _turn_on(self) -> None:
        try:
            self._request(self.source)
        except UserError as exc:
            self.notify(str(exc), title="No metrics", severity="warning", timeout=6)
            return
        self.overlay_on = True
        self._changed()

    def cancel(self) -> None:
        """Stop a running analysis; nothing is cached from it."""
        if self._cancel is not None:
            self._cancel.set()
        self.overlay_on = False
        self._suggest_pending = False

    def suggest(self) -> None:
        """S: preview values suggested by the parents' metrics (computing them first if needed)."""
        try:
            key, models, base = self._request(PARENTS_SOURCE)
        except UserError as exc:
            self.notify(str(exc), title="No suggestion", severity="warning", timeout=6)
            return
        known = self.insights.get(PARENTS_SOURCE)
        if known is not None and known[0] == key:
            self._open_suggestion(known[1])
            return
        self._suggest_pending = True
        if self.running != key:
            self._start(key, models, base)
        self.notify("computing the metrics first…", timeout=3)

    # -- what the analysis reads ---------------------------------------------------------------

    def _output_folder(self) -> Path | None:
        """The recipe's output folder (read from the recipe's folder, as the merge writes it), when
        a merged model is there."""
        from mergetui.recipe.paths import output_folder

        folder = output_folder(self.recipe, self.base_dir)
        if folder is None:
            return None
        has_weights = folder.is_dir() and (
            any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()
        )
        return folder if has_weights else None

    def _request(self, source: str) -> Request:
        """(key, models, base) of the analysis the overlay needs; UserError when impossible."""
        models: dict[str, Path] = {}
        for name in self.recipe.models:
            facts = self.facts.get(name)
            if facts is None:
                raise UserError("the checkpoints' headers are still being read", fix="try again")
            if facts.path is None:
                raise UserError(
                    f"model {name!r} is not on this machine: {facts.error or 'not found'}",
                    fix="download it first; metrics read the weights",
                )
            models[name] = facts.path
        if len(models) < 2:
            raise UserError("metrics compare two or more models", fix="add models on the Setup tab")
        base = self.recipe.base if self.recipe.base in models else None
        if source == OUTPUT_SOURCE:
            output = self._output_folder()
            if output is None:
                raise UserError(
                    "no merged model in the output folder yet",
                    where=self.recipe.output or "output",
                    fix="run the merge first, or pick the parents' metrics (O)",
                )
            name = OUTPUT_SOURCE
            while name in models:
                name += "_"
            models = {**models, name: output}
            base = name
        key = (source, tuple((n, str(p)) for n, p in models.items()), base)
        return key, models, base

    def sync(self) -> None:
        """Give the grid the analysis the overlay should show, starting it when it is missing."""
        if not self.overlay_on:
            self._show(None, None)
            return
        try:
            key, models, base = self._request(self.source)
        except UserError:
            self._show(None, None)
            if self.running is None:
                self.show_note()
            return
        known = self.insights.get(self.source)
        if known is not None and known[0] == key:
            self._show(known[1], self.metric)
            self.show_note()
            return
        self._show(None, None)
        if self.running != key:
            self._start(key, models, base)

    def _show(self, insight: Analysis | None, metric: str | None) -> None:
        model = self.grid.model
        if model.insight is not insight or model.metric != metric:
            model.set_overlay(insight, metric)

    # -- the analysis, in a worker -------------------------------------------------------------

    def _start(self, key: tuple, models: dict[str, Path], base: str | None) -> None:
        if self._cancel is not None:
            self._cancel.set()
        cancel = threading.Event()
        self._cancel = cancel
        self.running = key
        self._percent = -1
        self.show_note("computing metrics… (o cancels)")
        self._compute(key, models, base, cancel)

    @work(thread=True, exclusive=True, group="insight", exit_on_error=False)
    def _compute(
        self, key: tuple, models: dict[str, Path], base: str | None, cancel: threading.Event
    ) -> None:
        """Read every tensor once (or take the cached result), off the UI thread."""
        from mergetui.merge.analysis_run import analyze

        def progress(event: Any) -> None:
            percent = int(event.fraction * 100)
            if percent != self._percent:
                self._percent = percent
                reply(self, self._progress, key, percent, event.tensor)

        try:
            result = analyze(models, base, device="auto", cancel=cancel, on_progress=progress)
        except CancelledError:
            reply(self, self._stopped, key, None)
            return
        except UserError as exc:
            reply(self, self._stopped, key, str(exc))
            return
        except Exception as exc:  # a checkpoint that cannot be read is reported, not a crash
            reply(self, self._stopped, key, f"computing the metrics failed: {exc}")
            return
        reply(self, self._ready, key, result)

    def _progress(self, key: tuple, percent: int, tensor: str) -> None:
        if self.is_mounted and self.running == key:
            self.show_note(f"computing metrics {percent}% · {tensor} · o cancels")

    def _stopped(self, key: tuple, error: str | None) -> None:
        if not self.is_mounted or self.running != key:
            return
        self.running = None
        self._suggest_pending = False
        self.overlay_on = False
        if error:
            self.notify(error, title="No metrics", severity="error", timeout=8)
        else:
            self.notify("metrics cancelled", timeout=2)
        self.show_note()
        self._changed()

    def _ready(self, key: tuple, result: Analysis) -> None:
        if not self.is_mounted:
            return
        if self.running == key:
            self.running = None
        self.insights[key[0]] = (key, result)
        self._changed()
        self.show_note()
        if self._suggest_pending and key[0] == PARENTS_SOURCE:
            self._suggest_pending = False
            self._open_suggestion(result)

    def show_note(self, text: str | None = None) -> None:
        """Say what the overlay shows, or `text` (the analysis's progress); hidden when empty."""
        model = self.grid.model
        if text is None and model.overlay and model.insight is not None:
            insight = model.insight
            how = "merge output" if self.source == OUTPUT_SOURCE else "reference"
            text = (
                f"[b]{METRIC_TITLES[self.metric]}[/] vs [b]{insight.reference}[/] ({how}) "
                "· hot = differ · [b]O[/] metric · [b]S[/] suggest · [b]o[/] hide"
            )
            if self.metric == "agreement" and not insight.has_agreement:
                text = "agreement needs two task vectors (a base and two more models) · O metric"
        self.update(text or "")
        self.display = bool(text)

    # -- suggestions ---------------------------------------------------------------------------

    def _open_suggestion(self, insight: Analysis) -> None:
        try:
            suggestion = self.grid.model.suggest(insight, SUGGEST_STRENGTH)
        except GridError as exc:
            self.notify(str(exc), title="No suggestion", severity="warning", timeout=6)
            return
        if suggestion.empty:
            self.notify(
                "nothing to suggest: every layer agrees as much as the others, or the values "
                "already sit at their goals",
                timeout=5,
            )
            return
        preview = SuggestPreview(self.grid.model, insight, suggestion)
        self.app.push_screen(preview, self._answered)

    def _answered(self, suggestion: Suggestion | None) -> None:
        self.grid.focus()
        if suggestion is None:
            self.notify("suggestion dismissed: nothing changed", timeout=2)
            return
        self.grid.run_operation("suggest", self.grid.model.apply_suggestion, suggestion)
