"""The per-layer heat map: a `GridModel` drawn as rows of layers and columns of per-model parameters.

Shared by two screens, which may not import each other: the Recipe screen's Layers tab edits through
it (`tui/recipe/grid.py`: `LayerGrid` adds the editing keys, prompts and clipboard) and the Search
screen shows the best candidate in it, read-only. This widget owns what both need: the geometry
(label column, column widths, header rows), the cursor and the selection with their keys and the
mouse, and the drawing (a fixed label column, cells coloured by value, one cached style per heat
bucket, cleared when the theme or the model changes). Every rule about values lives in
`mergetui/editing/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mergetui.editing.cells import ALL, GROUP_LABELS, NA, CellRange, GridColumn
from mergetui.editing.layer_table import GridModel
from mergetui.merge.analysis import METRIC_TITLES
from mergetui.tui.themes import Heatmap

CELL_WIDTH = 8  # seven characters of value and a gap
MAX_CELL_WIDTH = 14  # wider when a model name needs it
HEAT_BUCKETS = 48  # distinct background shades (and cached styles) of the heat map

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


def _header_key(column: GridColumn, y: int) -> tuple:
    """What neighbouring columns share when header row `y` names them once (param, model, filter)."""
    if y == 0:
        return (column.param,)
    if y == 1:
        return (column.param, column.model or "shared")
    return (column.param, column.model, column.group)


class HeatGrid(ScrollView, can_focus=True):
    """Rows of layers, columns of per-model parameters, cells coloured by value; a cursor and a
    selection to read them by (arrows, shift+arrows, page keys, a click)."""

    COMPONENT_CLASSES = {
        "layer-grid--header",
        "layer-grid--label",
        "layer-grid--label-cursor",
        "layer-grid--cursor",
        "layer-grid--na",
    }

    DEFAULT_CSS = """
    HeatGrid {
        height: 1fr;
        background: $surface;
    }
    HeatGrid > .layer-grid--header { color: $text-accent; text-style: bold; background: $panel; }
    HeatGrid > .layer-grid--label { color: $text-muted; background: $panel; }
    HeatGrid > .layer-grid--label-cursor { color: $text; background: $panel; text-style: bold reverse; }
    HeatGrid > .layer-grid--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: bold underline;
    }
    HeatGrid:focus > .layer-grid--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    HeatGrid > .layer-grid--na { color: $text-disabled; }
    """

    BINDINGS = MOVE_BINDINGS

    @dataclass
    class CursorMoved(Message):
        """The cursor or the selection changed (the screen updates its status line)."""

    def __init__(self, model: GridModel, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.cursor: tuple[int, int] = (1, 0)
        self.anchor: tuple[int, int] | None = None
        self.heatmap: Heatmap | None = None
        self._style_cache: dict[float, Style] = {}
        self._widths: list[int] = []
        self._offsets: list[int] = [0]
        self.label_width = 8
        self._cursor_key: tuple | None = None

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

    # -- cursor and selection ------------------------------------------------------------------

    @property
    def selection(self) -> CellRange:
        """The selected block, or the cursor's cell when nothing is selected."""
        return CellRange.spanning(self.anchor or self.cursor, self.cursor)

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

    # -- colours -------------------------------------------------------------------------------

    def set_heatmap(self, heatmap: Heatmap) -> None:
        self.heatmap = heatmap
        self._style_cache.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        self._style_cache.clear()
        super().notify_style_update()

    def _heat_style(self, fraction: float | None) -> Style:
        if fraction is None or self.heatmap is None:
            return Style()
        bucket = round(min(1.0, max(0.0, fraction)) * HEAT_BUCKETS) / HEAT_BUCKETS
        style = self._style_cache.get(bucket)
        if style is None:
            background = self.heatmap.background(bucket)
            text = self.heatmap.text(background)
            style = Style(color=text.rich_color, bgcolor=background.rich_color)
            self._style_cache[bucket] = style
        return style

    # -- drawing -------------------------------------------------------------------------------

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
        """Header row `y` (param, model, filter), a name spanning the columns that share it."""
        style = self.get_component_rich_style("layer-grid--header")
        metric_style = style + Style(italic=True, bold=False)
        columns = self.model.columns
        offsets = self._offsets
        title = ("param", "model", "filter")[y]
        keys = [_header_key(c, y) for c in columns]
        segments: list[Segment] = []
        index = 0
        while index < len(columns):
            end = index
            while end + 1 < len(columns) and keys[end + 1] == keys[index]:
                end += 1
            span = offsets[end + 1] - offsets[index]
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
        """A layer's label, then its cells: heat coloured, dim where fixed, the cursor, the block."""
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
