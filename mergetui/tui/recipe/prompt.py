"""The grid's prompts: the number line under it, and the preset dialog (p).

`NumberPrompt` belongs to its grid (`LayerGrid.prompt`): the grid opens it (enter, s, a, m, or a
digit typed on a cell) and the prompt applies the number to the grid's selection; escape closes it.
`ask_preset` fills the grid's layers with a curve. Either way the grid has the focus again.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Label

from mergetui.editing.cells import CellRange
from mergetui.tui.dialogs.presets import PresetChoice, PresetDialog

if TYPE_CHECKING:
    from mergetui.tui.recipe.grid import LayerGrid

# kind: (what the label says, the GridModel operation)
OPERATIONS = {
    "set": ("set", "set_value"),
    "add": ("add to", "add"),
    "multiply": ("multiply", "multiply"),
}


class NumberPrompt(Horizontal):
    """A label ("set 4 cells: ") and the number being typed; hidden while nobody asks."""

    def __init__(self, grid: LayerGrid) -> None:
        super().__init__(id="grid-prompt")
        self.grid = grid
        self.kind: str | None = None  # set, add or multiply while open

    def compose(self) -> ComposeResult:
        yield Label("", id="grid-prompt-label")
        # No select-all on focus: the key that opened the prompt is its first character, and
        # the next one typed must follow it, not replace it.
        yield Input(id="grid-prompt-input", select_on_focus=False)

    def on_mount(self) -> None:
        self.display = False

    def open(self, kind: str, initial: str = "", typed: bool = False) -> None:
        """Ask for a number for the grid's selection, `initial` filled in.

        `typed` marks a character typed on the grid: keys typed quickly can reach the grid before
        the prompt has focus, and each of those continues the number being typed."""
        field = self.query_one(Input)
        if typed and self.kind == "set" and self.display:
            field.insert_text_at_cursor(initial)
            return
        size = self.grid.selection.size
        cells = "1 cell" if size == 1 else f"{size} cells"
        self.kind = kind
        self.query_one(Label).update(f"{OPERATIONS[kind][0]} {cells}: ")
        self.display = True
        field.value = initial
        field.focus()
        field.cursor_position = len(initial)

    def close(self) -> None:
        self.kind = None
        self.display = False
        self.grid.focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        event.stop()
        kind = self.kind
        text = event.value.strip()
        self.close()
        if not kind or not text:
            return
        try:
            number = float(text)
        except ValueError:
            self.notify(f"{text!r} is not a number", severity="error")
            return
        grid = self.grid
        operation = getattr(grid.model, OPERATIONS[kind][1])
        grid.run_operation(kind, operation, grid.selection, number)

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.kind is not None:
            event.stop()
            self.close()


def ask_preset(grid: LayerGrid) -> None:
    """Ask for a preset curve for the grid's selected layers (or the cursor's column), then fill."""
    model = grid.model
    area = grid.column_area()
    rows = model.layer_rows(area.rows)
    if not rows:
        grid.notify("select layer rows to fill", severity="warning")
        return
    if model.columns[area.left].metric:
        grid.notify("metric columns are read-only: pick a parameter column", severity="warning")
        return
    spec = model.spec_of(area.left)
    low = spec.minimum if spec.minimum is not None else 0.0
    high = spec.maximum if spec.maximum is not None else 1.0
    layers = (model.rows[rows[0]].layer, model.rows[rows[-1]].layer)
    columns = {model.columns[c].title for c in area.columns}
    target = f"{', '.join(sorted(columns))} · layers {layers[0]}..{layers[1]}"
    grid.app.push_screen(
        PresetDialog(low, high, layers, target), partial(_preset_chosen, grid, area)
    )


def _preset_chosen(grid: LayerGrid, area: CellRange, choice: PresetChoice | None) -> None:
    grid.focus()
    if choice is None:
        return
    grid.run_operation(
        f"preset {choice.name}",
        grid.model.preset,
        area,
        choice.name,
        choice.low,
        choice.high,
        at_layer=choice.at_layer,
        seed=choice.seed,
    )
