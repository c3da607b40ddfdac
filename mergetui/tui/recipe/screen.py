"""The Recipe screen: method, models, parameters, the per-layer grid, slices and problems.

Four tabs (F6..F9) so it fits 80x24, a pane each: Setup (`setup.py`: method, models, shared
parameters, output), Layers (`layers.py`: the grid), Slices (`slices.py`: layer stacks) and Problems
(`problems.py`: the validator's findings, refreshed on every edit). Every change goes through the
document (`with pane.edit(...)`), which gives undo/redo for free and posts `RecipeEdited`; the screen
then refreshes the panes, the validation and the title (`recipe_changed`). The screen itself reads
the checkpoints' headers (in a worker; the panes share what it learns), switches tabs, undoes, and
lists its keys for the help screen and the palette.

A multi-stage file shows one stage at a time: a line above the tabs lists the stages (the open
one marked) and ctrl+→ / ctrl+← switch; the Run screen runs them all (docs/multi-stage.md).

An MoE recipe (docs/moe.md) shows instead of the tabs as one read-only view (`moe_view.py`): its
base, gate mode, experts per token and each expert with its prompts; the Run screen assembles it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Header, Static, TabbedContent

from mergetui.editing.cells import format_number
from mergetui.editing.layer_table import GridModel
from mergetui.tui.commands import PaletteCommand, PaletteEntry, binding_commands
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.recipe.base import RecipeEdited, RecipePart
from mergetui.tui.recipe.facts import CheckpointFacts, read_checkpoint_facts
from mergetui.tui.recipe.grid import LayerGrid
from mergetui.tui.recipe.layers import LayersPane
from mergetui.tui.recipe.moe_view import MoeView
from mergetui.tui.recipe.problems import ProblemsPane, severity_of
from mergetui.tui.recipe.setup import SetupPane
from mergetui.tui.recipe.slices import SlicesPane
from mergetui.tui.status_line import StatusLine
from mergetui.tui.workers import reply


class Tab(NamedTuple):
    """One tab: its key (shown in its title), its name, what the palette says of it, and what
    has the focus when the key chooses it."""

    key: str
    name: str
    detail: str
    focus: str

    def title(self, count: str = "") -> str:
        return f"{self.name}{count} [dim]{self.key.upper()}[/]"


TABS = {
    "setup": Tab("f6", "Setup", "method, models, shared parameters, output", "#method-button"),
    "layers": Tab("f7", "Layers", "the per-layer grid", "#grid"),
    "slices": Tab("f8", "Slices", "layer stacks for passthrough merges", "#slices-table"),
    "problems": Tab("f9", "Problems", "what the validator found", "#problems-table"),
}


class RecipeScreen(RecipePart, ModeScreen):
    """Build a recipe: method, models, parameters, the per-layer grid, slices, problems."""

    DEFAULT_CSS = """
    RecipeScreen #stage-bar { height: auto; max-height: 2; padding: 0 1; display: none; }
    RecipeScreen #stage-bar.multi { display: block; }
    RecipeScreen.moe #recipe-tabs { display: none; }
    RecipeScreen.moe MoeView { display: block; }
    """

    BINDINGS = [
        Binding("ctrl+s", "app.save", "Save"),  # the app's key, shown in this footer only
        *(Binding(t.key, f"tab('{n}')", f"{t.name} tab", show=False) for n, t in TABS.items()),
        Binding("ctrl+z", "undo", "Undo", show=False),
        Binding("ctrl+y", "redo", "Redo", show=False),
        # A multi-stage file's stages (offered only for one).
        Binding("ctrl+right", "stage(1)", "Next stage (a multi-stage file)", show=False),
        Binding("ctrl+left", "stage(-1)", "Previous stage (a multi-stage file)", show=False),
    ]
    PALETTE = (
        PaletteEntry("stage(1)", "Recipe: next stage", "open the multi-stage file's next stage"),
        PaletteEntry("stage(-1)", "Recipe: previous stage", "open the previous stage"),
        *(PaletteEntry(f"tab('{n}')", f"Recipe: {t.name} tab", t.detail) for n, t in TABS.items()),
        PaletteEntry("undo", "Undo", "undo the last recipe edit"),
        PaletteEntry("redo", "Redo", "redo what was undone"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.facts: dict[str, CheckpointFacts] = {}  # shared with the panes, which read it
        self._facts_key: tuple = ()
        config = self.app.config
        self.grid_model = GridModel(
            self.app.document, split=config.split_filters, step=config.nudge_step or 0.05
        )

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="stage-bar")
        initial = "layers" if self.recipe.models else "setup"
        with TabbedContent(id="recipe-tabs", initial=initial):
            yield SetupPane(TABS["setup"].title(), self.facts, id="setup")
            yield LayersPane(TABS["layers"].title(), self.facts, self.grid_model, id="layers")
            yield SlicesPane(TABS["slices"].title(), self.facts, id="slices")
            yield ProblemsPane(TABS["problems"].title, id="problems")
        yield MoeView(id="moe-view")
        yield StatusLine(id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.recipe_changed(initial=True)

    def on_screen_resume(self) -> None:
        self.app.refresh_title()

    @property
    def layers_pane(self) -> LayersPane:
        return self.query_one(LayersPane)

    # What tests and the app read of the panes' state.
    @property
    def problems(self) -> list[Any]:
        return self.query_one(ProblemsPane).problems

    @property
    def prompt_kind(self) -> str | None:
        return self.layers_pane.grid.prompt.kind

    @property
    def overlay_on(self) -> bool:
        return self.layers_pane.insight.overlay_on

    @property
    def _insight_running(self) -> tuple | None:
        return self.layers_pane.insight.running

    @property
    def layer_override(self) -> int | None:
        return self.layers_pane.layer_override

    @layer_override.setter
    def layer_override(self, count: int | None) -> None:
        self.layers_pane.layer_override = count

    def _refresh_grid(self) -> None:
        self.layers_pane.refresh_grid()

    # -- refresh after any change --------------------------------------------------------------

    def reload_document(self, *, keep_tab: bool = False) -> None:
        """The app opened another recipe (or another stage): start the panes over on it."""
        self.grid_model.document = self.app.document
        self.facts.clear()
        self._facts_key = ()
        self.recipe_changed(initial=True)
        if not keep_tab:
            self.query_one(TabbedContent).active = "layers" if self.recipe.models else "setup"

    def recipe_changed(self, initial: bool = False) -> None:
        """Refresh everything that shows the recipe (after an edit, undo, redo or open)."""
        if self._show_moe():
            return
        self._show_stages()
        self.query_one(SetupPane).show_recipe()
        self.layers_pane.refresh_grid()
        self.query_one(SlicesPane).show_recipe()
        self.query_one(ProblemsPane).validate()
        self._maybe_load_checkpoints()
        self.app.refresh_title()

    # -- an MoE recipe ---------------------------------------------------------------------------

    def _show_moe(self) -> bool:
        """An MoE recipe: its view instead of the tabs (True); otherwise the tabs (False)."""
        moe = self.document.moe
        self.set_class(moe is not None, "moe")
        if moe is None:
            return False
        self.query_one("#stage-bar", Static).set_class(False, "multi")
        view = self.query_one(MoeView)
        view.show(moe, self.base_dir)
        if self.is_mounted and self.app.screen is self:
            view.focus()
        self._show_moe_status()
        self.app.refresh_title()
        return True

    def _show_moe_status(self) -> None:
        moe = self.document.moe
        assert moe is not None
        self.query_one("#status", StatusLine).show(
            [f"[b]MoE recipe[/] · {len(moe.experts)} experts", "read-only", "F4 r assembles it"]
        )

    # -- a multi-stage file's stages -------------------------------------------------------------

    def _show_stages(self) -> None:
        """The stage line: every stage (method, models), the open one marked; hidden otherwise."""
        bar = self.query_one("#stage-bar", Static)
        document = self.document
        bar.set_class(document.stages is not None, "multi")
        if document.stages is None:
            return
        parts = []
        for index, stage in enumerate(document.stages):
            text = (
                f"{index + 1} {escape(document.stage_name(stage))}: {escape(stage.recipe.method)}"
                f" of {escape(', '.join(stage.recipe.models) or 'no models')}"
            )
            parts.append(f"[reverse b]{text}[/]" if index == document.stage_index else text)
        bar.update(" · ".join(parts) + "  [dim]ctrl+←/→ stage · F4 r runs all[/]")

    def _multi(self) -> bool:
        return self.document.stages is not None and len(self.document.stages) > 1

    def _offered(self, action: str) -> bool:
        """Whether a key of this screen applies to the open document: the stage keys only for a
        multi-stage file; for an MoE recipe (read-only, no tabs) none but Save, which says why."""
        if self.document.moe is not None:
            return action == "app.save"
        return self._multi() or not action.startswith("stage(")

    def _screen_keys(self) -> list[Binding]:
        """The screen's keys for the help and palette (those that apply: `_offered`)."""
        return [b for b in self.BINDINGS if self._offered(b.action)]

    def _palette_entries(self) -> tuple[PaletteEntry, ...]:
        return tuple(e for e in self.PALETTE if self._offered(e.action))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.document.moe is not None and action in ("tab", "undo", "redo", "stage"):
            return False
        if action == "stage":
            return self.document.stages is not None and len(self.document.stages) > 1
        return True

    def action_stage(self, step: int) -> None:
        document = self.document
        if document.stages is None:
            return
        index = (document.stage_index + step) % len(document.stages)
        document.select_stage(index)
        self.reload_document(keep_tab=True)  # the same tab, on the other stage

    @on(RecipeEdited)
    def _edited(self) -> None:
        self.recipe_changed()

    @on(ProblemsPane.Checked)
    @on(LayerGrid.CursorMoved)
    def _refresh_status(self) -> None:
        """The status line: valid or how many problems, the grid's cell and selection, the step."""
        if self.document.moe is not None:
            self._show_moe_status()
            return
        errors = sum(1 for p in self.problems if severity_of(p) == "error")
        warnings = len(self.problems) - errors
        if errors:
            state = f"[b $error]✗ {errors} error(s)[/]" + (
                f" {warnings} warning(s)" if warnings else ""
            )
        elif warnings:
            state = f"[b $warning]! {warnings} warning(s)[/]"
        else:
            state = "[b $success]✓ valid[/]"
        model = self.grid_model
        grid = self.layers_pane.grid
        parts = [state]
        if model.columns and model.rows:
            parts.append(model.describe(*grid.cursor))
            if grid.anchor is not None:
                parts.append(f"{grid.selection.size} selected")
        parts.append(f"step {format_number(model.step, precise=True)}")
        self.query_one("#status", StatusLine).show(parts)

    # -- checkpoints (headers, in a worker) ----------------------------------------------------

    def _maybe_load_checkpoints(self) -> None:
        key = tuple((n, e.source, e.revision) for n, e in self.recipe.models.items())
        missing = [n for n in self.recipe.models if n not in self.facts]
        if key == self._facts_key and not missing:
            return
        self._facts_key = key
        sources = {n: (e.source, e.revision) for n, e in self.recipe.models.items()}
        self._load_checkpoints(sources, self.base_dir)

    @work(thread=True, exclusive=True, group="checkpoints", exit_on_error=False)
    def _load_checkpoints(self, sources: dict[str, tuple[str, str | None]], base_dir: Path) -> None:
        facts = {
            name: read_checkpoint_facts(source, revision, base_dir)
            for name, (source, revision) in sources.items()
        }
        reply(self, self._checkpoints_loaded, facts)

    def _checkpoints_loaded(self, facts: dict[str, CheckpointFacts]) -> None:
        if not self.is_mounted:
            return
        self.facts.update(facts)
        self.query_one(SetupPane).show_models()
        self.layers_pane.refresh_grid()
        self.query_one(SlicesPane).show_recipe()

    # -- tabs, undo ----------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one(TABS[tab].focus).focus()

    @on(TabbedContent.TabActivated)
    def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "layers":
            self.layers_pane.grid.focus()

    def action_undo(self) -> None:
        self._history(self.document.undo(), "undid", "nothing to undo")

    def action_redo(self) -> None:
        self._history(self.document.redo(), "redid", "nothing to redo")

    def _history(self, label: str | None, done: str, nothing: str) -> None:
        if label is None:
            self.notify(nothing, timeout=2)
            return
        self.recipe_changed()
        self.notify(f"{done}: {label}", timeout=2)

    # -- help and palette ----------------------------------------------------------------------

    def help_sections(self) -> list[HelpSection]:
        app = self.app
        if self.document.moe is not None:
            return [
                (
                    "Recipe screen (an MoE recipe, read-only)",
                    binding_rows(app, self._screen_keys()),
                ),
                ("MoE view", [("↑ ↓ pgup pgdn", "Scroll the experts and their prompts")]),
            ]
        return [
            ("Recipe screen", binding_rows(app, self._screen_keys())),
            ("Layers tab: the grid", LayerGrid.help_rows(app)),
            ("Setup tab: models", binding_rows(app, SetupPane.BINDINGS)),
            ("Slices tab", binding_rows(app, SlicesPane.BINDINGS)),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        """Every action of this screen (tabs, models, slices, the grid's keys) for the palette;
        the keys each names are read from the bindings of the pane that runs it."""
        if self.document.moe is not None:
            return binding_commands(self, self._palette_entries(), self._screen_keys())
        setup, slices, layers = (self.query_one(p) for p in (SetupPane, SlicesPane, LayersPane))
        return [
            *binding_commands(self, self._palette_entries(), self._screen_keys()),
            *binding_commands(setup, setup.PALETTE, setup.BINDINGS, where="models list"),
            *binding_commands(slices, slices.PALETTE, slices.BINDINGS, where="slices list"),
            *binding_commands(layers, layers.PALETTE),
            *binding_commands(
                layers.grid,
                LayerGrid.PALETTE,
                LayerGrid.BINDINGS,
                where="Layers tab",
                run=self._grid_action,
            ),
        ]

    def _grid_action(self, action: str) -> None:
        self.action_tab("layers")
        self.call_later(self.layers_pane.grid.run_action, action)
