"""The per-layer grid of the Layers tab: the shared heat map, and keys that edit it.

Kept thin on purpose: every rule about values lives in `mergetui/editing/`. The heat map itself
(geometry, cursor, selection, drawing) is `tui/heat_grid.py`'s `HeatGrid`, which the Search screen
shows too; this subclass adds the editing: the clipboard and its own prompts, the number prompt
under it (`prompt`, which the Layers tab places) and the preset dialog (`prompt.py`). It tells the
screen what happened with messages: `RecipeEdited` after an edit, `CursorMoved` (the heat map's),
`SettingsChanged`, and `InsightRequested` for the metric overlay's keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from textual import events
from textual.app import App
from textual.binding import Binding
from textual.message import Message

from mergetui.editing.cells import NA, Block, CellRange, GridError, format_number
from mergetui.editing.layer_table import GridModel
from mergetui.editing.operations import next_step
from mergetui.tui.commands import PaletteEntry
from mergetui.tui.heat_grid import MOVE_BINDINGS, HeatGrid
from mergetui.tui.help import binding_rows
from mergetui.tui.recipe.base import RecipeEdited
from mergetui.tui.recipe.prompt import NumberPrompt, ask_preset

TYPING_KEYS = set("0123456789.")
# Keys the help lists that are not bindings: typing starts the number prompt; the mouse.
TYPING_HELP = ("0-9 .", "Type a number: sets the selection")
MOUSE_HELP = ("mouse", "Click a cell to move there, shift+click to select")

_key = partial(Binding, show=False)
# Every key beyond the heat map's moves is a command, in the palette too (as "Grid: <description>").
COMMAND_BINDINGS = [
    _key("enter", "edit", "Edit cell / set selection"),
    _key("plus,equals_sign", "nudge(1)", "Nudge up by the step"),
    _key("minus,underscore", "nudge(-1)", "Nudge down by the step"),
    _key("right_square_bracket", "change_step(1)", "Larger nudge step"),
    _key("left_square_bracket", "change_step(-1)", "Smaller nudge step"),
    _key("s", "prompt('set')", "Set selection to a value"),
    _key("a", "prompt('add')", "Add a number to the selection"),
    _key("m", "prompt('multiply')", "Multiply the selection"),
    _key("p", "preset", "Fill with a preset curve"),
    _key("i", "interpolate", "Interpolate between first and last rows"),
    _key("c,ctrl+c", "copy", "Copy selection"),
    _key("v", "paste", "Paste at the cursor"),
    _key("f", "toggle_split", "Split by filter (attn/mlp/rest)"),
    _key("o", "insight('toggle')", "Overlay a metric of the checkpoints (on/off)"),
    _key("O", "insight('pick')", "Choose the overlay metric"),
    _key("S", "insight('suggest')", "Suggest values from the metrics (preview)"),
    _key("ctrl+a", "select_all", "Select every layer and column"),
    _key("escape", "clear_selection", "Clear the selection"),
]


class LayerGrid(HeatGrid):
    """The heat map of the Layers tab, with the keys that edit the recipe through it."""

    BINDINGS = [*MOVE_BINDINGS, *COMMAND_BINDINGS]
    PALETTE = tuple(PaletteEntry(b.action, f"Grid: {b.description}") for b in COMMAND_BINDINGS)

    @dataclass
    class SettingsChanged(Message):
        """The nudge step or the split view changed (the app remembers them)."""

    @dataclass
    class InsightRequested(Message):
        """A key of the metric overlay: `kind` is toggle, pick (the metric) or suggest."""

        kind: str

    def __init__(self, model: GridModel, *, id: str | None = None) -> None:
        super().__init__(model, id=id)
        self.clipboard: Block | None = None
        self.prompt = NumberPrompt(self)

    @classmethod
    def help_rows(cls, app: App) -> list[tuple[str, str]]:
        """The grid's keys for the help screen, typing and the mouse included."""
        return [TYPING_HELP, *binding_rows(app, cls.BINDINGS), MOUSE_HELP]

    def column_area(self) -> CellRange:
        """For curve operations: the selection, or every layer of the cursor's column."""
        if self.anchor is not None and self.selection.size > 1:
            return self.selection
        col = self.cursor[1]
        return CellRange(0, col, len(self.model.rows) - 1, col)

    def action_select_all(self) -> None:
        rows, cols = self.model.shape
        if rows and cols:
            self.anchor = (0, 0)
            self.cursor = (rows - 1, cols - 1)
            self._remember_cursor()
            self._moved()

    def action_clear_selection(self) -> None:
        if self.anchor is not None:
            self.anchor = None
            self._moved()

    # -- operations ----------------------------------------------------------------------------

    def _report(self, changed: int, label: str) -> None:
        self.refresh_model()
        if changed:
            self.post_message(RecipeEdited(label))
        else:
            why = self.model.why_not_editable(*self.cursor) if self.model.shape[0] else None
            self.notify(
                why or "nothing changed", severity="warning" if why else "information", timeout=3
            )

    def run_operation(
        self, label: str, operation: Callable[..., int], *args: Any, **kw: Any
    ) -> int:
        """Run a model operation, reporting a `GridError` as a notification instead of raising."""
        if not self.model.columns:
            self.notify(self.model.problem or "no grid to edit", severity="warning")
            return 0
        try:
            changed = operation(*args, **kw)
        except GridError as exc:
            self.notify(str(exc), severity="warning", timeout=4)
            return 0
        self._report(changed, label)
        return changed

    def action_nudge(self, direction: int) -> None:
        self.run_operation("nudge", self.model.nudge, self.selection, direction)

    def set_step(self, step: float) -> None:
        """The nudge step for + and - (remembered by the app)."""
        self.model.step = step
        self.post_message(self.CursorMoved())
        self.post_message(self.SettingsChanged())

    def action_change_step(self, direction: int) -> None:
        self.set_step(next_step(self.model.step, direction))
        self.notify(f"nudge step {format_number(self.model.step, precise=True)}", timeout=2)

    def action_edit(self) -> None:
        if not self.model.columns:
            return
        value = self.model.value(*self.cursor)
        initial = "" if value is NA or value is None else format_number(value, precise=True)
        self.prompt.open("set", initial)

    def action_prompt(self, kind: str) -> None:
        if self.model.columns:
            self.prompt.open(kind)

    def action_insight(self, kind: str) -> None:
        self.post_message(self.InsightRequested(kind))

    def action_interpolate(self) -> None:
        self.run_operation("interpolate", self.model.interpolate, self.column_area())

    def action_preset(self) -> None:
        if self.model.columns:
            ask_preset(self)

    def action_copy(self) -> None:
        if not self.model.columns:
            return
        self.clipboard = self.model.copy(self.selection)
        self.app.copy_to_clipboard(self.clipboard.to_text())
        self.notify(f"copied {self.selection.size} cell(s)", timeout=2)

    def action_paste(self) -> None:
        if self.clipboard is None:
            self.notify(
                "nothing copied yet (c copies the selection)", severity="warning", timeout=3
            )
            return
        self._paste(self.clipboard)

    def _paste(self, block: Block) -> None:
        area = self.selection
        self.run_operation("paste", self.model.paste, block, (area.top, area.left))

    def on_paste(self, event: events.Paste) -> None:
        """Text pasted from the terminal (a spreadsheet column, say) lands at the cursor."""
        event.stop()
        try:
            block = Block.from_text(event.text)
        except GridError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.clipboard = block
        self._paste(block)

    def action_toggle_split(self) -> None:
        split = self.model.toggle_split()
        self.refresh_model()
        mixed = self.model.mixed_columns()
        if not split and mixed:
            self.notify(
                f"{', '.join(mixed)} differ by filter and stay split",
                severity="information",
                timeout=4,
            )
        self.post_message(self.CursorMoved())
        self.post_message(self.SettingsChanged())

    def on_key(self, event: events.Key) -> None:
        """Typing a digit or a point starts entering a number for the selection; escape closes
        an open prompt before it clears the selection."""
        if event.key == "escape" and self.prompt.kind is not None:
            event.stop()
            self.prompt.close()
        elif event.character and event.character in TYPING_KEYS and self.model.columns:
            event.stop()
            event.prevent_default()
            self.prompt.open("set", event.character, typed=True)
