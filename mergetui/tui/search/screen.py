"""The Search screen: find per-layer values for the open recipe, and watch the search find them.

The form (`form.py`) says what to search: the parameters, layer groups, smooth, the objective
texts, the budget and the seed (from the recipe's `[search]` table, else defaults: `settings.py`).
ctrl+r checks it all in the core (`search_spec_from_recipe`, nothing loaded yet) and starts
`mergetui.search.loop.run_search` in a thread worker (`worker.py`); its events come back as
messages and `progress.py` keeps what they say: the fitness curve (`curve.py`), the latest
evaluations (`evaluations.py`), the best candidate in the Recipe screen's heat map (`best.py`) and
the ETA. escape stops after the candidate in progress; ctrl+r again resumes from the out folder's
evaluations.jsonl. ctrl+b asks the app to write the best values into the recipe, one undo step
(ctrl+z here or on the Recipe screen undoes it); then F4 merges it and F5 chats as usual.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Checkbox, Header, Input, Static

from mergetui.errors import UserError
from mergetui.tui.commands import PaletteCommand, PaletteEntry, binding_commands
from mergetui.tui.footer import KeyFooter
from mergetui.tui.heat_grid import HeatGrid
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.paths_text import document_folder, short_path
from mergetui.tui.search.best import BestPane, layer_count
from mergetui.tui.search.curve import FitnessCurve
from mergetui.tui.search.evaluations import EvaluationsTable, fitness_text
from mergetui.tui.search.form import SearchForm
from mergetui.tui.search.messages import ApplyBest, SearchEnded, SearchLayers, SearchUpdate
from mergetui.tui.search.progress import SearchProgress
from mergetui.tui.search.settings import other_objectives, search_table, settings_for
from mergetui.tui.search.worker import SearchJob, run_job
from mergetui.tui.status_line import StatusLine
from mergetui.tui.workers import reply

# Focus moves through the form with Textual's own keys (the screen's tab bindings have no text).
TAB_HELP = ("tab shift+tab", "Next / previous field")


# An MoE recipe (docs/moe.md) has no per-layer merge values: what the screen says instead.
MOE_NOT_SEARCHABLE = "an MoE recipe has no per-layer values to search"


class SearchScreen(ModeScreen):
    """Search per-layer values for the open recipe: a live curve, the best so far, apply it."""

    # The heat map has the focus first: the arrows read the best candidate; tab reaches the form.
    AUTO_FOCUS = "#search-grid"
    DEFAULT_CSS = """
    SearchScreen #search-state { height: 1; padding: 0 1; overflow: hidden; }
    SearchScreen #search-panels { height: 7; }
    SearchScreen #status { height: 1; padding: 0 1; background: $panel; overflow: hidden; }
    """

    BINDINGS = [
        Binding("ctrl+r", "start", "Start", tooltip="Start the search, or resume a stopped one"),
        Binding("escape", "stop", "Stop", tooltip="Stop after the candidate in progress"),
        Binding(
            "ctrl+b",
            "apply_best",
            "Apply best",
            tooltip="Write the best values into the recipe (one undo step)",
        ),
        Binding("ctrl+z", "undo", "Undo a recipe edit", show=False),
        Binding("ctrl+y", "redo", "Redo a recipe edit", show=False),
        Binding("ctrl+g", "focus_grid", "Focus the best candidate's grid", show=False),
    ]
    PALETTE = [
        PaletteEntry("start", "Search: start or resume", "CMA-ES over the open recipe's values"),
        PaletteEntry("stop", "Search: stop", "after the candidate in progress; resumable"),
        PaletteEntry("apply_best", "Search: apply the best", "to the recipe, one undo step"),
        PaletteEntry("focus_grid", "Search: the best candidate's grid", ""),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.cancel_event: threading.Event | None = None
        self.abandon_event: threading.Event | None = None
        self.progress = SearchProgress()
        self.outcome: str | None = None  # finished, stopped or failed, once a run ended
        self.parameters: tuple[str, ...] = ()  # of the search shown
        self.out_dir: Path | None = None  # of the search shown (or the next one)
        self._recipe_key: tuple | None = None  # what the form was filled for
        self._layers_key: tuple | None = None  # what the layer count was read for

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield SearchForm(id="search-form")
        yield Static(id="search-state")
        with Horizontal(id="search-panels"):
            yield FitnessCurve(id="search-curve")
            yield EvaluationsTable(id="search-evaluations")
        yield BestPane(id="search-best")
        yield StatusLine(id="status")
        yield KeyFooter()

    @property
    def form(self) -> SearchForm:
        return self.query_one(SearchForm)

    @property
    def curve(self) -> FitnessCurve:
        return self.query_one(FitnessCurve)

    @property
    def table(self) -> EvaluationsTable:
        return self.query_one(EvaluationsTable)

    @property
    def best_pane(self) -> BestPane:
        return self.query_one(BestPane)

    async def on_mount(self) -> None:
        await self._follow_document()

    async def on_screen_resume(self) -> None:
        self.app.refresh_title()
        await self._follow_document()

    def on_unmount(self) -> None:
        self.stop_search()

    # -- the open recipe -----------------------------------------------------------------------

    async def _follow_document(self) -> None:
        """Fill the form for the open recipe when it is another one (or its method or models
        changed); show its values while no search has a best to show."""
        document = self.app.document
        recipe = document.recipe
        key = self._key()
        self._read_layers()
        if self.running:
            return
        if key != self._recipe_key:
            self._recipe_key = key
            self.outcome = None
            self.progress = SearchProgress()
            self.curve.clear()
            self.table.clear()
            await self.form.show(settings_for(recipe, document_folder(document)))
        if self.progress.best is None:
            self.best_pane.show(
                copy.deepcopy(recipe), "[b]start[/]: the recipe's own values (the search's mean)"
            )
        self.out_dir = self._out_dir()
        self._show_idle()

    def _key(self) -> tuple:
        """What the form depends on: the document, its method and its models."""
        recipe = self.app.document.recipe
        return (id(self.app.document), recipe.method, tuple(recipe.models), recipe.base)

    def _out_dir(self) -> Path:
        """Where `mergetui evolve` would write for this recipe (the CLI's rule, one home)."""
        from mergetui.search.outputs import default_out_dir

        return default_out_dir(self.app.document.suggested_path())

    def _read_layers(self) -> None:
        recipe = self.app.document.recipe
        folder = document_folder(self.app.document)
        key = (folder, tuple((e.source, e.revision) for e in recipe.models.values()))
        if key != self._layers_key:
            self._layers_key = key
            self._layers_worker(copy.deepcopy(recipe), folder)

    @work(thread=True, exclusive=True, group="search-layers", exit_on_error=False)
    def _layers_worker(self, recipe: Any, folder: Path) -> None:
        reply(self, self.post_message, SearchLayers(layer_count(recipe, folder)))

    @on(SearchLayers)
    def _layers_read(self, message: SearchLayers) -> None:
        self.best_pane.set_layers(message.count)
        self._refresh_status()

    # -- what the screen says ------------------------------------------------------------------

    def _state(self, markup: str) -> None:
        self.query_one("#search-state", Static).update(markup)

    @on(Input.Changed, "#search-budget")
    def _show_idle(self) -> None:
        """The ready line: how many candidates, where the results go, whether it resumes."""
        from mergetui.search.outputs import EVALUATIONS_FILE

        if self.outcome is not None or self.running:
            return
        if self.app.document.moe is not None:
            self._state(f"[b $warning]not searchable[/]: {MOE_NOT_SEARCHABLE}")
            self.refresh_bindings()
            self._refresh_status()
            return
        settings = self.form.settings
        try:
            budget: int | str = self.form.read().budget
        except UserError:
            budget = settings.budget if settings else "?"
        others = other_objectives(settings) if settings else []
        extra = f" (+ {', '.join(others)} from the recipe)" if others else ""
        resume = ""
        if self.out_dir is not None and (self.out_dir / EVALUATIONS_FILE).is_file():
            resume = " · resumes what it holds"
        where = escape(short_path(self.out_dir)) if self.out_dir is not None else "?"
        self._state(f"[b]ready[/]: ctrl+r scores {budget} candidates{extra} → {where}{resume}")
        self.refresh_bindings()
        self._refresh_status()

    @on(HeatGrid.CursorMoved)
    def _refresh_status(self) -> None:
        parts = []
        best = self.progress.best
        if best is not None:
            parts.append(f"[b]best #{best.evaluation + 1}[/] {fitness_text(best.fitness)}")
        cell = self.best_pane.describe_cursor()
        if cell:
            parts.append(escape(cell))
        if self.progress.device:
            parts.append(f"on {escape(self.progress.device)}")
        if self.out_dir is not None:
            parts.append(f"out {escape(short_path(self.out_dir))}")
        self.query_one("#status", StatusLine).show(parts)

    # -- actions -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return not self.running
        if action == "stop":
            return self.running
        if action == "apply_best":
            return True if self.progress.best is not None else None
        return True

    async def action_start(self) -> None:
        """Check the form's search in the core, then run it in a worker (resuming what the out
        folder holds)."""
        if self.running:
            return
        document = self.app.document
        if document.moe is not None:
            self.notify(
                f"{MOE_NOT_SEARCHABLE}: open a merge recipe (ctrl+o)",
                title="Not searched",
                severity="warning",
                timeout=8,
            )
            return
        if self._key() != self._recipe_key:
            # Another recipe was opened (or its models changed) while a search ran: the form is
            # filled for it first, to be looked at before a start.
            await self._follow_document()
            self.notify("the recipe changed: the form is filled for it · ctrl+r starts", timeout=5)
            return
        try:
            settings = self.form.read()
            recipe = copy.deepcopy(document.recipe)
            if recipe.source_path is None and (document.path or document.origin):
                recipe.source_path = str(document.path or document.origin)
            from mergetui.search.spec import search_spec_from_recipe

            spec = search_spec_from_recipe(recipe, search_table(settings))
        except UserError as exc:
            self.outcome = "failed"
            self._state(self.progress.ended_line("failed", str(exc)))
            self.notify(str(exc), title="Not searched", severity="error", timeout=10)
            return
        self.out_dir = self._out_dir()
        self.parameters = spec.parameters
        self.progress = SearchProgress()
        self.outcome = None
        self.curve.clear()
        self.table.clear()
        self.running = True
        self.cancel_event = threading.Event()
        self.abandon_event = threading.Event()
        self.form.disabled = True
        self.best_pane.grid.focus()
        self._state(self.progress.running_line())
        self.refresh_bindings()
        self._refresh_status()
        self._search(SearchJob(spec, self.out_dir, self.cancel_event, abandon=self.abandon_event))

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search(self, job: SearchJob) -> None:
        """Run the search in this thread; everything the UI needs goes as messages."""
        run_job(self, job)

    def action_stop(self) -> None:
        if self.running and self.cancel_event is not None and not self.cancel_event.is_set():
            self.cancel_event.set()
            self._state("[b $warning]stopping[/] after the candidate in progress…")

    def stop_search(self) -> None:
        """Stop a running search at once (leaving the app): it keeps what it scored and drops the
        candidate in progress, which a resume scores again."""
        if self.cancel_event is not None:
            self.cancel_event.set()
        if self.abandon_event is not None:
            self.abandon_event.set()

    def action_apply_best(self) -> None:
        best = self.progress.best
        if best is None:
            self.notify("no best candidate yet: start a search (ctrl+r)", severity="warning")
            return
        label = f"apply search best #{best.evaluation + 1}"
        self.post_message(ApplyBest(copy.deepcopy(best.recipe), self.parameters, label))

    def action_undo(self) -> None:
        self._history(self.app.document.undo(), "undid", "nothing to undo")

    def action_redo(self) -> None:
        self._history(self.app.document.redo(), "redid", "nothing to redo")

    def _history(self, label: str | None, done: str, nothing: str) -> None:
        if label is None:
            self.notify(nothing, timeout=2)
            return
        self.app.recipe_edited()
        self.notify(f"{done}: {label}", timeout=3)

    def action_focus_grid(self) -> None:
        self.best_pane.grid.focus()

    # -- messages from the worker --------------------------------------------------------------

    @on(SearchUpdate)
    def _update(self, message: SearchUpdate) -> None:
        changed = self.progress.observe(message.event)
        progress = self.progress
        if changed == "scored":
            self.table.add(progress.rows[-1])
        elif changed in ("generation", "finished"):
            self.curve.set_points(progress.best_curve, progress.median_curve)
        elif changed == "best":
            best = progress.best
            self.table.mark_best(best.evaluation)
            self.best_pane.show(
                best.recipe,
                f"[b]best[/] #{best.evaluation + 1} · fitness {fitness_text(best.fitness)} · "
                "ctrl+b applies it to the recipe",
            )
        elif changed == "notice":
            self.notify(escape(str(getattr(message.event, "message", ""))), timeout=6)
        if self.running and not (self.cancel_event and self.cancel_event.is_set()):
            self._state(progress.running_line())
        self._refresh_status()

    @on(SearchEnded)
    def _ended(self, message: SearchEnded) -> None:
        self.running = False
        self.cancel_event = None
        self.abandon_event = None
        self.form.disabled = False
        if message.finished is not None:
            self._update(SearchUpdate(message.finished))
        self.outcome = message.outcome
        self._state(self.progress.ended_line(message.outcome, message.message))
        if message.outcome == "failed":
            self.notify(message.message, title="Search failed", severity="error", timeout=10)
        else:
            what = "done" if message.outcome == "finished" else "stopped: ctrl+r resumes"
            self.notify(f"search {what}", timeout=4)
        self.refresh_bindings()
        self._refresh_status()

    # -- help and palette ----------------------------------------------------------------------

    def help_sections(self) -> list[HelpSection]:
        app = self.app
        return [
            ("Search screen", binding_rows(app, self.BINDINGS)),
            ("The form", [TAB_HELP, *binding_rows(app, Checkbox.BINDINGS)]),
            ("The best candidate's grid", binding_rows(app, HeatGrid.BINDINGS)),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        return binding_commands(self, self.PALETTE, self.BINDINGS)
