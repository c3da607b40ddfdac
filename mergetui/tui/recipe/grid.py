"""The per-layer grid widget: draws a `GridModel` as a heat map and turns keys into its operations.

Kept thin on purpose: every rule about values lives in `mergetui/editing/`. The widget owns the
cursor, the selection, the clipboard and its own prompts: the number prompt under it (`prompt`,
which the Layers tab places) and the preset dialog (`prompt.py`). Drawing is `drawing.py`. It tells the screen
what happened with messages: `RecipeEdited` after an edit, `CursorMoved`, `SettingsChanged`, and
`InsightRequested` for the metric overlay's keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from rich.style import Style
from textual import events
from textual.app import App
from textual.binding import Binding
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView

from mergetui.editing.cells import ALL, NA, Block, CellRange, GridError, format_number
from mergetui.editing.layer_table import GridModel
from mergetui.editing.operations import next_step
from mergetui.tui.commands import PaletteEntry
from mergetui.tui.help import binding_rows
from mergetui.tui.recipe.base import RecipeEdited
from mergetui.tui.recipe.drawing import GridDrawing
from mergetui.tui.recipe.prompt import NumberPrompt, ask_preset

CELL_WIDTH = 8  # seven characters of value and a gap
MAX_CELL_WIDTH = 14  # wider when a model name needs it
TYPING_KEYS = set("0123456789.")
# Keys the help lists that are not bindings: typing starts the number prompt; the mouse.
TYPING_HELP = ("0-9 .", "Type a number: sets the selection")
MOUSE_HELP = ("mouse", "Click a cell to move there, shift+click to select")

_key = partial(Binding, show=False)
_ARROWS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
MOVE_BINDINGS = [
    *(_key(k, f"move{d}", "Move the cursor", key_display="arrows") for k, d in _ARROWS.items()),
    *(
        _key(f"shift+{k}", f"extend{d}", "Select a block", key_display="shift+arrows")
        for k, d in _ARROWS.items()
    ),
    _key("pageup", "page(-1)", "Page up / down"),
    _key("pagedown", "page(1)", "Page up / down"),
    _key("home", "jump('home')", "First / last column"),
    _key("end", "jump('end')", "First / last column"),
    _key("ctrl+home", "jump('top')", "First / last row"),
    _key("ctrl+end", "jump('bottom')", "First / last row"),
]
# Every other key is a command, in the palette too (as "Grid: <description>").
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


class LayerGrid(GridDrawing, ScrollView, can_focus=True):
    """Rows of layers, columns of per-model parameters, cells coloured by value."""

    COMPONENT_CLASSES = {
        "layer-grid--header",
        "layer-grid--label",
        "layer-grid--label-cursor",
        "layer-grid--cursor",
        "layer-grid--na",
    }

    DEFAULT_CSS = """
    LayerGrid {
        height: 1fr;
        background: $surface;
    }
    LayerGrid > .layer-grid--header { color: $text-accent; text-style: bold; background: $panel; }
    LayerGrid > .layer-grid--label { color: $text-muted; background: $panel; }
    LayerGrid > .layer-grid--label-cursor { color: $text; background: $panel; text-style: bold reverse; }
    LayerGrid > .layer-grid--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: bold underline;
    }
    LayerGrid:focus > .layer-grid--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    LayerGrid > .layer-grid--na { color: $text-disabled; }
    """

    BINDINGS = [*MOVE_BINDINGS, *COMMAND_BINDINGS]
    PALETTE = tuple(PaletteEntry(b.action, f"Grid: {b.description}") for b in COMMAND_BINDINGS)

    @dataclass
    class CursorMoved(Message):
        """The cursor or the selection changed (the screen updates its status and curve preview)."""

    @dataclass
    class SettingsChanged(Message):
        """The nudge step or the split view changed (the app remembers them)."""

    @dataclass
    class InsightRequested(Message):
        """A key of the metric overlay: `kind` is toggle, pick (the metric) or suggest."""

        kind: str

    def __init__(self, model: GridModel, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.cursor: tuple[int, int] = (1, 0)
        self.anchor: tuple[int, int] | None = None
        self.clipboard: Block | None = None
        self.prompt = NumberPrompt(self)
        self._style_cache: dict[float, Style] = {}
        self._widths: list[int] = []
        self._offsets: list[int] = [0]
        self.label_width = 8
        self._cursor_key: tuple | None = None

    @classmethod
    def help_rows(cls, app: App) -> list[tuple[str, str]]:
        """The grid's keys for the help screen, typing and the mouse included."""
        return [TYPING_HELP, *binding_rows(app, cls.BINDINGS), MOUSE_HELP]

    # -- geometry ------------------------------------------------------------------------------

    def _column_width(self, col: int) -> int:
        """Room for the value, or for the model's name when the column is not split."""
        column = self.model.columns[col]
        if column.group != ALL:
            return CELL_WIDTH
        name = column.model or "shared"
        return max(CELL_WIDTH, min(MAX_CELL_WIDTH, len(name) + 1))

    @property
    def header_height(self) -> int:
        return 3 if any(c.group != ALL for c in self.model.columns) else 2

    def refresh_model(self) -> None:
        """Call after the model changed: resize, keep the cursor inside, redraw."""
        rows, cols = self.model.shape
        row, col = self.cursor
        col = self._column_for(self._cursor_key, col)
        self.cursor = (min(max(row, 0), max(rows - 1, 0)), min(max(col, 0), max(cols - 1, 0)))
        self._remember_cursor()
        labels = [self.model.row_label(r) for r in range(rows)]
        self.label_width = max([6, *(len(label) for label in labels)]) + 2
        if self.anchor is not None:
            self.anchor = (
                min(self.anchor[0], max(rows - 1, 0)),
                min(self.anchor[1], max(cols - 1, 0)),
            )
        self._widths = [self._column_width(c) for c in range(cols)]
        self._offsets = [sum(self._widths[:c]) for c in range(cols + 1)]
        self.virtual_size = Size(self.label_width + self._offsets[-1], self.header_height + rows)
        self._style_cache.clear()
        self.refresh()
        self.post_message(self.CursorMoved())

    def on_mount(self) -> None:
        self.refresh_model()
        # Start on layer 0 rather than the embeddings row.
        if len(self.model.rows) > 1:
            self.cursor = (1, 0)
            self._remember_cursor()

    def _remember_cursor(self) -> None:
        columns = self.model.columns
        col = self.cursor[1]
        self._cursor_key = (
            (columns[col].param, columns[col].model, columns[col].group)
            if col < len(columns)
            else None
        )

    def _column_for(self, key: tuple | None, fallback: int) -> int:
        """Where the cursor's column went after a rebuild (split, method change), if it still exists."""
        if key is None:
            return fallback
        columns = self.model.columns
        for index, column in enumerate(columns):
            if (column.param, column.model, column.group) == key:
                return index
        for index, column in enumerate(columns):
            if (column.param, column.model) == key[:2]:
                return index
        return fallback

    # -- selection -----------------------------------------------------------------------------

    @property
    def selection(self) -> CellRange:
        """The selected block, or the cursor's cell when nothing is selected."""
        return CellRange.spanning(self.anchor or self.cursor, self.cursor)

    def column_area(self) -> CellRange:
        """For curve operations: the selection, or every layer of the cursor's column."""
        if self.anchor is not None and self.selection.size > 1:
            return self.selection
        col = self.cursor[1]
        return CellRange(0, col, len(self.model.rows) - 1, col)

    def _moved(self) -> None:
        self.refresh()
        self.post_message(self.CursorMoved())

    def _move_to(self, row: int, col: int, extend: bool) -> None:
        rows, cols = self.model.shape
        if not rows or not cols:
            return
        row = min(max(row, 0), rows - 1)
        col = min(max(col, 0), cols - 1)
        if extend:
            if self.anchor is None:
                self.anchor = self.cursor
        else:
            self.anchor = None
        self.cursor = (row, col)
        self._remember_cursor()
        self._scroll_to_cursor()
        self._moved()

    def _scroll_to_cursor(self) -> None:
        row, col = self.cursor
        region = Region(
            self.label_width + self._offsets[col], self.header_height + row, self._widths[col], 1
        )
        self.scroll_to_region(
            region,
            spacing=Spacing(self.header_height, 0, 0, self.label_width),
            animate=False,
            force=True,
            immediate=True,
        )

    def action_move(self, rows: int, cols: int) -> None:
        self._move_to(self.cursor[0] + rows, self.cursor[1] + cols, extend=False)

    def action_extend(self, rows: int, cols: int) -> None:
        self._move_to(self.cursor[0] + rows, self.cursor[1] + cols, extend=True)

    def action_page(self, direction: int) -> None:
        page = max(1, self.scrollable_content_region.height - self.header_height - 1)
        self._move_to(self.cursor[0] + direction * page, self.cursor[1], extend=False)

    def action_jump(self, where: str) -> None:
        row, col = self.cursor
        target = {
            "home": (row, 0),
            "end": (row, self.model.shape[1] - 1),
            "top": (0, col),
            "bottom": (self.model.shape[0] - 1, col),
        }[where]
        self._move_to(*target, extend=False)

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

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x, y = offset
        if y < self.header_height or x < self.label_width:
            return
        row = int(self.scroll_y) + y - self.header_height
        position = int(self.scroll_x) + x - self.label_width
        col = next((c for c in range(len(self._widths)) if position < self._offsets[c + 1]), -1)
        if 0 <= row < self.model.shape[0] and 0 <= col < self.model.shape[1]:
            self._move_to(row, col, extend=event.shift)
