"""How the grid draws itself: the header rows, then a fixed label column and the cells of each row.

A mixin of `LayerGrid`, kept apart from its keys and operations: it reads the grid's geometry,
cursor, selection and model, and caches one style per heat bucket (cleared when the theme or the
model changes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from mergetui.editing.cells import GROUP_LABELS, NA, GridColumn
from mergetui.merge.analysis import METRIC_TITLES
from mergetui.tui.themes import Heatmap

if TYPE_CHECKING:
    from mergetui.tui.recipe.grid import LayerGrid

HEAT_BUCKETS = 48  # distinct background shades (and cached styles) of the heat map


def _header_key(column: GridColumn, y: int) -> tuple:
    """What neighbouring columns share when header row `y` names them once (param, model, filter)."""
    if y == 0:
        return (column.param,)
    if y == 1:
        return (column.param, column.model or "shared")
    return (column.param, column.model, column.group)


class GridDrawing:
    """`render_line` of `LayerGrid`, and the heat map's colours."""

    heatmap: Heatmap | None = None

    def set_heatmap(self: LayerGrid, heatmap: Heatmap) -> None:
        self.heatmap = heatmap
        self._style_cache.clear()
        self.refresh()

    def notify_style_update(self: LayerGrid) -> None:
        self._style_cache.clear()
        super().notify_style_update()

    def _heat_style(self: LayerGrid, fraction: float | None) -> Style:
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

    def render_line(self: LayerGrid, y: int) -> Strip:
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

    def _header_line(self: LayerGrid, y: int, label_width: int) -> tuple[Strip, Strip]:
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

    def _row_line(self: LayerGrid, row: int, label_width: int) -> tuple[Strip, Strip]:
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
