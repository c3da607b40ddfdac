"""The fitness curve: best-so-far and median fitness per generation, drawn in braille dots.

Each character cell holds 2x4 dots (Unicode braille, U+2800..U+28FF), so a panel of 40x5 cells is an
80x20 plot: enough to see a search level off. The two series are connected point to point, the best
in the accent colour, the median muted; where both pass through a cell the best's colour wins. The
left column names the top and bottom of the scale. Plain Rich text: no plotting dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

BRAILLE = 0x2800
# The bit of each dot in a cell, by (column, row): braille numbers the dots 1-2-3-7 down the left,
# 4-5-6-8 down the right.
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
AXIS_WIDTH = 8  # "12.345 ┤" — the scale's labels and the axis line


def scale_label(value: float) -> str:
    """A scale label in at most 6 characters: 2.5, 0.0213, 1.2e+03."""
    for digits in (4, 3, 2):
        text = f"{value:.{digits}g}"
        if len(text) <= 6:
            return text
    return f"{value:.0e}"


def _line(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """The dots from (x0, y0) to (x1, y1), both ends included (Bresenham)."""
    points = []
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    error = dx + dy
    while True:
        points.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return points
        doubled = 2 * error
        if doubled >= dy:
            error += dy
            x0 += sx
        if doubled <= dx:
            error += dx
            y0 += sy


def plot_dots(
    series: Sequence[Sequence[float]], width: int, height: int, low: float, high: float
) -> list[list[int]]:
    """For each series, a cell mask grid: masks[s][row * width + col] holds its dots in that cell.

    Points are spread evenly over the width (the first at the left edge, the last at the right);
    values outside low..high are clipped; non-finite values break the line.
    """
    dots_x, dots_y = width * 2, height * 4
    masks = [[0] * (width * height) for _ in series]
    span = high - low
    for index, values in enumerate(series):
        count = len(values)
        previous: tuple[int, int] | None = None
        for i, value in enumerate(values):
            if not math.isfinite(value):
                previous = None
                continue
            x = round(i * (dots_x - 1) / (count - 1)) if count > 1 else 0
            where = (min(max(value, low), high) - low) / span if span > 0 else 0.5
            y = dots_y - 1 - round(where * (dots_y - 1))
            points = _line(*previous, x, y) if previous is not None else [(x, y)]
            for px, py in points:
                cell = (py // 4) * width + px // 2
                masks[index][cell] |= DOT_BITS[px % 2][py % 4]
            previous = (x, y)
    return masks


class FitnessCurve(Widget, can_focus=False):
    """Best-so-far and median fitness per generation (lower is better), as a braille plot."""

    COMPONENT_CLASSES = {"fitness-curve--best", "fitness-curve--median", "fitness-curve--axis"}
    DEFAULT_CSS = """
    FitnessCurve {
        height: 1fr;
        width: 1fr;
        border: round $panel-lighten-2;
        border-title-color: $text-accent;
        border-subtitle-color: $text-muted;
        padding: 0 1 0 0;
    }
    FitnessCurve > .fitness-curve--best { color: $accent; text-style: bold; }
    FitnessCurve > .fitness-curve--median { color: $text-muted; }
    FitnessCurve > .fitness-curve--axis { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.best: list[float] = []
        self.median: list[float] = []
        self.border_title = "fitness (lower is better)"
        self.border_subtitle = "⣀ best  ⠤ median"

    def clear(self) -> None:
        self.best, self.median = [], []
        self.refresh()

    def set_points(self, best: Sequence[float], median: Sequence[float]) -> None:
        """Every generation so far: the best fitness of the search up to it, and its median."""
        self.best, self.median = list(best), list(median)
        self.refresh()

    def add_generation(self, best: float, median: float) -> None:
        self.best.append(best)
        self.median.append(median)
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size
        plot_width = width - AXIS_WIDTH
        finite = [v for v in (*self.best, *self.median) if math.isfinite(v)]
        if plot_width < 4 or height < 1 or not finite:
            waiting = "the curve starts after the first generation" if width > 20 else ""
            return Text(waiting, style=self.get_component_rich_style("fitness-curve--axis"))
        low, high = min(finite), max(finite)
        masks = plot_dots((self.best, self.median), plot_width, height, low, high)
        styles = [
            self.get_component_rich_style("fitness-curve--best"),
            self.get_component_rich_style("fitness-curve--median"),
        ]
        axis = self.get_component_rich_style("fitness-curve--axis")
        text = Text(no_wrap=True, overflow="crop")
        for row in range(height):
            label = scale_label(high) if row == 0 else scale_label(low) if row == height - 1 else ""
            text.append(f"{label:>6} ┤" if label else "       │", style=axis)
            for col in range(plot_width):
                cell = row * plot_width + col
                best, median = masks[0][cell], masks[1][cell]
                style: Style | None = styles[0] if best else styles[1] if median else None
                mask = best | median
                text.append(chr(BRAILLE | mask) if mask else " ", style=style)
            if row < height - 1:
                text.append("\n")
        return text
