"""The latest evaluations: a small table, newest first, as many rows as the panel has room for.

Plain text drawn on each change (no DataTable: nothing here is selected or scrolled, and a table of
a few rows costs nothing to redraw). The best candidate so far is marked with a star.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from mergetui.formatting import format_duration

KEEP = 200  # rows remembered (more than any panel shows)


@dataclass(frozen=True)
class EvaluationRow:
    """One scored candidate as the table shows it."""

    evaluation: int  # 0-based; shown 1-based as "#"
    generation: int  # 0-based; shown 1-based
    fitness: float
    seconds: float
    resumed: bool = False


def fitness_text(value: float | None) -> str:
    """A fitness for people: 4 decimals below 100, else 4 significant digits; "—" for none."""
    if value is None or value != value:
        return "—"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.4g}"


class EvaluationsTable(Widget, can_focus=False):
    """#, generation, fitness and seconds of the newest evaluations."""

    COMPONENT_CLASSES = {"evaluations--header", "evaluations--best", "evaluations--resumed"}
    DEFAULT_CSS = """
    EvaluationsTable {
        height: 1fr;
        width: 34;
        border: round $panel-lighten-2;
        border-title-color: $text-accent;
    }
    EvaluationsTable > .evaluations--header { color: $text-muted; text-style: bold; }
    EvaluationsTable > .evaluations--best { color: $accent; text-style: bold; }
    EvaluationsTable > .evaluations--resumed { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[EvaluationRow] = []
        self.best: int | None = None  # the evaluation number of the best so far
        self.border_title = "latest evaluations"

    def clear(self) -> None:
        self.rows, self.best = [], None
        self.refresh()

    def add(self, row: EvaluationRow) -> None:
        self.rows.append(row)
        del self.rows[:-KEEP]
        self.refresh()

    def mark_best(self, evaluation: int) -> None:
        self.best = evaluation
        self.refresh()

    def render(self) -> Text:
        height = self.content_size.height
        header = self.get_component_rich_style("evaluations--header")
        text = Text(no_wrap=True, overflow="crop")
        text.append(f"{'#':>5} {'gen':>4} {'fitness':>10} {'s':>7}", style=header)
        if not self.rows:
            text.append("\n  none yet")
            return text
        for row in reversed(self.rows[-max(0, height - 1) :]):
            star = "★" if row.evaluation == self.best else " "
            seconds = "replay" if row.resumed else format_duration(row.seconds)
            line = (
                f"\n{star}{row.evaluation + 1:>4} {row.generation + 1:>4} "
                f"{fitness_text(row.fitness):>10} {seconds:>7}"
            )
            if row.evaluation == self.best:
                style = self.get_component_rich_style("evaluations--best")
            elif row.resumed:
                style = self.get_component_rich_style("evaluations--resumed")
            else:
                style = None
            text.append(line, style=style)
        return text
