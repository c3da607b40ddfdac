"""The Layers tab: the per-layer grid, with the notes above it and the curve and prompt below.

The grid edits the recipe itself (and owns its number prompt); this tab feeds it what the screen
knows (layer counts and tensor names from the checkpoints' headers, a layer count typed in when
they cannot be read), routes the overlay keys to `InsightNote`, shows the column's curve and
remembers the grid's settings.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Sparkline, Static

from mergetui.editing.cells import GROUP_LABELS, format_number
from mergetui.editing.layer_table import GridModel
from mergetui.tui.commands import PaletteEntry
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.recipe.base import RecipePane
from mergetui.tui.recipe.facts import Facts, layer_counts, tensor_names
from mergetui.tui.recipe.grid import LayerGrid
from mergetui.tui.recipe.insight import InsightNote

GRID_KEYS_HINT = (
    "[b]⏎[/] edit · [b]+/-[/] nudge · [b]⇧arrows[/] select · [b]p[/] preset · "
    "[b]f[/] split · [b]o[/] metrics · [b]F1[/] keys"
)


class LayersPane(RecipePane):
    """The Layers tab (F7)."""

    PALETTE = (
        PaletteEntry("set_layer_count", "Set layer count…", "when the checkpoints cannot be read"),
        PaletteEntry("set_step", "Set nudge step…", "how much + and - change a cell"),
        PaletteEntry(
            "cancel_insight", "Cancel metrics", "stop computing the grid's metric overlay"
        ),
    )

    def __init__(self, title: str, facts: Facts, model: GridModel, *, id: str) -> None:
        super().__init__(title, facts, id=id)
        self.layer_override: int | None = None  # a layer count typed in (set_layer_count)
        self.grid = LayerGrid(model, id="grid")
        self.insight = InsightNote(self.grid, facts, self.refresh_grid, id="insight-note")

    def compose(self) -> ComposeResult:
        yield Static(GRID_KEYS_HINT, id="grid-keys", classes="hint")
        yield Static(id="grid-note")
        yield self.insight
        yield self.grid
        with Horizontal(id="curve"):
            yield Static(id="curve-label")
            yield Sparkline([], id="sparkline")
        yield self.grid.prompt

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._apply_heatmap())
        self._apply_heatmap()

    def _apply_heatmap(self) -> None:
        self.grid.set_heatmap(self.app.heatmap)

    def refresh_grid(self) -> None:
        """Rebuild the grid from the recipe and what is known of the checkpoints."""
        model = self.grid.model
        model.layer_counts = layer_counts(self.facts)
        model.assumed_layers = self.layer_override
        model.names = tensor_names(self.recipe.models, self.facts) or model.names
        self.insight.sync()
        model.rebuild()
        self.grid.refresh_model()
        note = self.query_one("#grid-note", Static)
        note.update(f"⚠ {model.layer_note}" if model.layer_note else "")
        note.display = bool(model.layer_note)

    # -- what the grid tells -------------------------------------------------------------------

    @on(LayerGrid.CursorMoved)
    def _show_curve(self) -> None:
        """The cursor's column as a sparkline, with its range (the event goes on to the screen)."""
        model = self.grid.model
        label = self.query_one("#curve-label", Static)
        sparkline = self.query_one(Sparkline)
        if not model.columns:
            label.update("")
            sparkline.data = []
            return
        col = self.grid.cursor[1]
        values = [v for v in model.column_values(col) if v is not None]
        column = model.columns[col]
        group = f" {GROUP_LABELS[column.group]}" if GROUP_LABELS[column.group] else ""
        if values:
            span = f"{format_number(min(values))}..{format_number(max(values))}"
            low = min(values)
            sparkline.data = [v - low for v in values] if max(values) > low else [1.0] * len(values)
        else:
            span = "no values yet"
            sparkline.data = []
        sparkline.display = bool(values)
        label.update(f"{column.title}{group} {span} ")

    @on(LayerGrid.SettingsChanged)
    def _remember_settings(self) -> None:
        config = self.app.config
        config.nudge_step = self.grid.model.step
        config.split_filters = self.grid.model.split
        self.app.save_config()

    @on(LayerGrid.InsightRequested)
    def _insight_key(self, event: LayerGrid.InsightRequested) -> None:
        {"toggle": self.insight.toggle, "pick": self.insight.pick, "suggest": self.insight.suggest}[
            event.kind
        ]()

    def action_cancel_insight(self) -> None:
        self.insight.cancel()

    # -- palette commands ----------------------------------------------------------------------

    def action_set_layer_count(self) -> None:
        current, _ = self.grid.model.model_layers()
        prompt = TextPrompt(
            "Layer count of the models",
            str(current),
            hint="used when the checkpoints cannot be read (a Hub model not downloaded yet)",
        )
        self.app.push_screen(prompt, self._layer_count_set)

    def _layer_count_set(self, text: str | None) -> None:
        count = self._number(text, int, "the layer count is a whole number above 0")
        if count is None:
            return
        self.layer_override = count
        self.refresh_grid()

    def action_set_step(self) -> None:
        current = format_number(self.grid.model.step, precise=True)
        self.app.push_screen(TextPrompt("Nudge step for + and -", current), self._step_set)

    def _step_set(self, text: str | None) -> None:
        step = self._number(text, float, "the step is a number above 0")
        if step is not None:
            self.grid.set_step(step)

    def _number(self, text: str | None, kind: type, error: str) -> float | None:
        """A number above 0 typed in a prompt; None (after saying why) when it is not one."""
        if text is None:
            return None
        try:
            number = kind(text)
            if not number > 0:
                raise ValueError
        except ValueError:
            self.notify(error, severity="error")
            return None
        return number
