"""The per-layer grid widget: draws a `GridModel` as a heat map and turns keys into its operations.

Kept thin on purpose: every rule about values lives in `mergetui/editing/`. The widget owns only the
cursor, the selection, the drawing (fixed label column and header rows, so labels stay visible while
the cells scroll) and the clipboard. Prompts for numbers and presets belong to the screen: the
widget asks for them with messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mergetui.editing.cells import ALL, GROUP_LABELS, NA, Block, CellRange, GridError, format_number
from mergetui.editing.layer_table import GridModel
from mergetui.editing.operations import next_step
from mergetui.merge.analysis import METRIC_TITLES
from mergetui.tui.themes import Heatmap

CELL_WIDTH = 8  # seven characters of value and a gap
MAX_CELL_WIDTH = 14  # wider when a model name needs it
TYPING_KEYS = set("0123456789.")


@dataclass(frozen=True)
class GridAction:
    """A grid key: used for the bindings, the help screen and the command palette alike."""

    key: str
    action: str
    description: str
    show: bool = False


GRID_ACTIONS: tuple[GridAction, ...] = (
    GridAction("enter", "edit", "Edit cell / set selection"),
    GridAction("plus,equals_sign", "nudge(1)", "Nudge up by the step"),
    GridAction("minus,underscore", "nudge(-1)", "Nudge down by the step"),
    GridAction("right_square_bracket", "change_step(1)", "Larger nudge step"),
    GridAction("left_square_bracket", "change_step(-1)", "Smaller nudge step"),
    GridAction("s", "prompt('set')", "Set selection to a value"),
    GridAction("a", "prompt('add')", "Add a number to the selection"),
    GridAction("m", "prompt('multiply')", "Multiply the selection"),
    GridAction("p", "preset", "Fill with a preset curve"),
    GridAction("i", "interpolate", "Interpolate between first and last rows"),
    GridAction("c,ctrl+c", "copy", "Copy selection"),
    GridAction("v", "paste", "Paste at the cursor"),
    GridAction("f", "toggle_split", "Split by filter (attn/mlp/rest)"),
    GridAction("o", "insight('toggle')", "Overlay a metric of the checkpoints (on/off)"),
    GridAction("O", "insight('pick')", "Choose the overlay metric"),
    GridAction("S", "insight('suggest')", "Suggest values from the metrics (preview)"),
    GridAction("ctrl+a", "select_all", "Select every layer and column"),
    GridAction("escape", "clear_selection", "Clear the selection"),
)


class LayerGrid(ScrollView, can_focus=True):
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

    BINDINGS = [
        Binding("up", "move(-1, 0)", "Move the cursor", show=False, key_display="arrows"),
        Binding("down", "move(1, 0)", "Move the cursor", show=False, key_display="arrows"),
        Binding("left", "move(0, -1)", "Move the cursor", show=False, key_display="arrows"),
        Binding("right", "move(0, 1)", "Move the cursor", show=False, key_display="arrows"),
        Binding(
            "shift+up", "extend(-1, 0)", "Select a block", show=False, key_display="shift+arrows"
        ),
        Binding(
            "shift+down", "extend(1, 0)", "Select a block", show=False, key_display="shift+arrows"
        ),
        Binding(
            "shift+left", "extend(0, -1)", "Select a block", show=False, key_display="shift+arrows"
        ),
        Binding(
            "shift+right", "extend(0, 1)", "Select a block", show=False, key_display="shift+arrows"
        ),
        Binding("pageup", "page(-1)", "Page up / down", show=False),
        Binding("pagedown", "page(1)", "Page up / down", show=False),
        Binding("home", "jump('home')", "First / last column", show=False),
        Binding("end", "jump('end')", "First / last column", show=False),
        Binding("ctrl+home", "jump('top')", "First / last row", show=False),
        Binding("ctrl+end", "jump('bottom')", "First / last row", show=False),
        *(Binding(a.key, a.action, a.description, show=a.show) for a in GRID_ACTIONS),
    ]

    class CursorMoved(Message):
        """The cursor or the selection changed (the screen updates its status and curve preview)."""

    class Edited(Message):
        """Cells changed in the recipe (the screen refreshes validation and the title)."""

        def __init__(self, changed: int, label: str) -> None:
            super().__init__()
            self.changed = changed
            self.label = label

    class PromptRequested(Message):
        """The grid needs a number: `kind` is set, add or multiply; `initial` prefills the prompt.

        `typed` marks a character typed on the grid: keys typed quickly can reach the grid before
        the prompt has focus, and each of those continues the number being typed."""

        def __init__(self, kind: str, initial: str = "", typed: bool = False) -> None:
            super().__init__()
            self.kind = kind
            self.initial = initial
            self.typed = typed

    class PresetRequested(Message):
        """The grid wants the preset dialog for its current selection."""

    class SettingsChanged(Message):
        """The nudge step or the split view changed (the app remembers them)."""

    class InsightRequested(Message):
        """The metric overlay: `kind` is toggle, pick (the metric) or suggest."""

        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind = kind

    def __init__(self, model: GridModel, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.cursor: tuple[int, int] = (1, 0)
        self.anchor: tuple[int, int] | None = None
        self.clipboard: Block | None = None
        self.heatmap: Heatmap | None = None
        self._style_cache: dict[tuple[float, bool], Style] = {}
        self._widths: list[int] = []
        self._offsets: list[int] = [0]
        self._label_width = 8
        self._cursor_key: tuple | None = None

    # -- geometry ------------------------------------------------------------------------------

    @property
    def label_width(self) -> int:
        return self._label_width

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
        self._label_width = max([6, *(len(label) for label in labels)]) + 2
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

    def set_heatmap(self, heatmap: Heatmap) -> None:
        self.heatmap = heatmap
        self._style_cache.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        self._style_cache.clear()
        super().notify_style_update()

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
        self.refresh()
        self.post_message(self.CursorMoved())

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
            self.refresh()
            self.post_message(self.CursorMoved())

    def action_clear_selection(self) -> None:
        if self.anchor is not None:
            self.anchor = None
            self.refresh()
            self.post_message(self.CursorMoved())

    # -- operations ----------------------------------------------------------------------------

    def _report(self, changed: int, label: str) -> None:
        self.refresh_model()
        if changed:
            self.post_message(self.Edited(changed, label))
        else:
            why = self.model.why_not_editable(*self.cursor) if self.model.shape[0] else None
            self.notify(
                why or "nothing changed", severity="warning" if why else "information", timeout=3
            )

    def run_operation(self, label: str, operation, *args, **kwargs) -> int:
        """Run a model operation, reporting a `GridError` as a notification instead of raising."""
        if not self.model.columns:
            self.notify(self.model.problem or "no grid to edit", severity="warning")
            return 0
        try:
            changed = operation(*args, **kwargs)
        except GridError as exc:
            self.notify(str(exc), severity="warning", timeout=4)
            return 0
        self._report(changed, label)
        return changed

    def action_nudge(self, direction: int) -> None:
        self.run_operation("nudge", self.model.nudge, self.selection, direction)

    def action_change_step(self, direction: int) -> None:
        self.model.step = next_step(self.model.step, direction)
        self.notify(f"nudge step {format_number(self.model.step, precise=True)}", timeout=2)
        self.post_message(self.CursorMoved())
        self.post_message(self.SettingsChanged())

    def action_edit(self) -> None:
        if not self.model.columns:
            return
        value = self.model.value(*self.cursor)
        initial = "" if value is NA or value is None else format_number(value, precise=True)
        self.post_message(self.PromptRequested("set", initial))

    def action_prompt(self, kind: str) -> None:
        if self.model.columns:
            self.post_message(self.PromptRequested(kind))

    def action_preset(self) -> None:
        if self.model.columns:
            self.post_message(self.PresetRequested())

    def action_insight(self, kind: str) -> None:
        self.post_message(self.InsightRequested(kind))

    def action_interpolate(self) -> None:
        self.run_operation("interpolate", self.model.interpolate, self.column_area())

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
        self.run_operation("paste", self.model.paste, self.clipboard, self._paste_origin())

    def _paste_origin(self) -> tuple[int, int]:
        area = self.selection
        return (area.top, area.left)

    def on_paste(self, event: events.Paste) -> None:
        """Text pasted from the terminal (a spreadsheet column, say) lands at the cursor."""
        event.stop()
        try:
            block = Block.from_text(event.text)
        except GridError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.clipboard = block
        self.run_operation("paste", self.model.paste, block, self._paste_origin())

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
        """Typing a digit or a point starts entering a number for the selection."""
        if event.character and event.character in TYPING_KEYS and self.model.columns:
            event.stop()
            event.prevent_default()
            self.post_message(self.PromptRequested("set", event.character, typed=True))

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

    # -- drawing -------------------------------------------------------------------------------

    def _heat_style(self, fraction: float | None) -> Style:
        if fraction is None or self.heatmap is None:
            return Style()
        bucket = round(min(1.0, max(0.0, fraction)) * 48) / 48
        key = (bucket, False)
        style = self._style_cache.get(key)
        if style is None:
            background = self.heatmap.background(bucket)
            text = self.heatmap.text(background)
            style = Style(color=text.rich_color, bgcolor=background.rich_color)
            self._style_cache[key] = style
        return style

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if not self.model.columns:
            if y == 1:
                text = f"  {self.model.problem or 'nothing to show'}"
                return Strip([Segment(text, base)]).adjust_cell_length(width, base)
            return Strip.blank(width, base)
        scroll_x, scroll_y = int(self.scroll_x), int(self.scroll_y)
        label_width = self.label_width
        header = self.header_height
        if y < header:
            label, body = self._header_line(y, label_width)
        else:
            row = scroll_y + y - header
            if row >= len(self.model.rows):
                return Strip.blank(width, base)
            label, body = self._row_line(row, label_width)
        body_width = max(0, width - label_width)
        body = body.crop(scroll_x, scroll_x + body_width)
        return Strip.join([label, body]).adjust_cell_length(width, base)

    def _header_line(self, y: int, label_width: int) -> tuple[Strip, Strip]:
        style = self.get_component_rich_style("layer-grid--header")
        metric_style = style + Style(italic=True, bold=False)
        columns = self.model.columns
        if y == 0:
            title = "param"
            keys = [c.param for c in columns]
        elif y == 1:
            title = "model"
            keys = [c.param + "\0" + (c.model or "shared") for c in columns]
        else:
            title = "filter"
            keys = [f"{c.param}\0{c.model}\0{c.group}" for c in columns]
        segments: list[Segment] = []
        index = 0
        while index < len(columns):
            end = index
            while end + 1 < len(columns) and keys[end + 1] == keys[index]:
                end += 1
            span = self._offsets[end + 1] - self._offsets[index]
            column = columns[index]
            if y == 0:
                text = METRIC_TITLES[column.param] if column.metric else column.param
            elif y == 1:
                text = column.model or ("all" if column.metric else "shared")
            else:
                text = GROUP_LABELS[column.group] or "all"
            text = text[: span - 1].ljust(span - 1) + "│"
            segments.append(Segment(text, metric_style if column.metric else style))
            index = end + 1
        label = Strip([Segment(title.ljust(label_width)[:label_width], style)], label_width)
        return label, Strip(segments)

    def _row_line(self, row: int, label_width: int) -> tuple[Strip, Strip]:
        model = self.model
        cursor_row, cursor_col = self.cursor
        selection = self.selection if self.anchor is not None else None
        label_style = self.get_component_rich_style(
            "layer-grid--label-cursor" if row == cursor_row else "layer-grid--label"
        )
        label_text = f" {model.row_label(row)}".ljust(label_width)[:label_width]
        cursor_style = self.get_component_rich_style("layer-grid--cursor")
        fixed_style = Style(dim=True, italic=True)
        na_style = self.get_component_rich_style("layer-grid--na")
        segments: list[Segment] = []
        for col in range(len(model.columns)):
            value = model.value(row, col)
            width = self._widths[col]
            text = model.text(row, col).rjust(width - 1)[: width - 1] + " "
            if value is NA:
                style = na_style
            else:
                style = self._heat_style(model.heat(row, col))
                if not model.editable(row, col) and not model.columns[col].metric:
                    style = style + fixed_style
            if (row, col) == (cursor_row, cursor_col):
                style = cursor_style
            elif selection is not None and (row, col) in selection:
                style = style + Style(reverse=True)
            segments.append(Segment(text, style))
        return Strip([Segment(label_text, label_style)], label_width), Strip(segments)
