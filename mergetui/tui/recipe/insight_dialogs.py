"""The metric overlay's dialogs: which metric to show (`MetricPicker`), and the suggested values
beside the current ones before they are applied (`SuggestPreview`).
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, OptionList, Static
from textual.widgets.option_list import Option

from mergetui.editing.cells import GROUP_LABELS, GridError, format_number
from mergetui.editing.layer_table import GridModel
from mergetui.editing.suggest import Suggestion, suggest_rule_lines
from mergetui.merge.analysis import METRIC_DESCRIPTIONS, METRIC_TITLES, METRICS, Analysis
from mergetui.tui.dialogs.base import DialogScreen

OUTPUT_SOURCE = "output"  # metrics between the merge output and each parent
PARENTS_SOURCE = "parents"  # metrics between the parents and the reference (base)


class MetricPicker(DialogScreen):
    """Which metric the overlay shows, of the parents or of the merge output; answers
    (metric, source) or None."""

    DEFAULT_CSS = """
    MetricPicker OptionList { height: auto; max-height: 12; }
    """

    def __init__(self, current: tuple[str, str], output: str | None) -> None:
        super().__init__()
        self.current = current
        self.output = output

    def choices(self) -> list[tuple[str, str, str]]:
        entries = [(metric, PARENTS_SOURCE, METRIC_DESCRIPTIONS[metric]) for metric in METRICS]
        if self.output is not None:
            entries += [
                ("cosine", OUTPUT_SOURCE, "cosine of each parent to the merge output"),
                ("distance", OUTPUT_SOURCE, "distance |parent - output| / |output|"),
                ("agreement", OUTPUT_SOURCE, "sign agreement of (parent - output) across parents"),
            ]
        return entries

    title_text = "Overlay metric"

    def compose_body(self) -> ComposeResult:
        options = [
            Option(
                Text.assemble(
                    (f"{METRIC_TITLES[m]:<6}", "bold"),
                    ("output " if src == OUTPUT_SOURCE else "parents ", "dim"),
                    text,
                ),
                id=f"{m}:{src}",
            )
            for m, src, text in self.choices()
        ]
        yield OptionList(*options, id="metrics")
        hint = "enter shows it beside each model's parameters · escape cancels"
        if self.output is None:
            hint += " · after a merge, the output's metrics appear here too"
        yield Static(hint, classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        ids = [f"{m}:{src}" for m, src, _ in self.choices()]
        wanted = f"{self.current[0]}:{self.current[1]}"
        options.highlighted = ids.index(wanted) if wanted in ids else 0
        options.focus()

    @on(OptionList.OptionSelected)
    def picked(self, event: OptionList.OptionSelected) -> None:
        metric, source = str(event.option.id).split(":")
        self.dismiss((metric, source))


class SuggestPreview(DialogScreen):
    """The proposed values beside the current ones, with the rule; answers the Suggestion to
    apply (at the chosen strength) or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("plus,equals_sign", "strength(1)", "Stronger"),
        Binding("minus", "strength(-1)", "Weaker"),
        Binding("y", "apply", "Apply"),
    ]
    DEFAULT_CSS = """
    SuggestPreview > .dialog { width: 100; height: 90%; }
    SuggestPreview #rule { height: auto; color: $text-muted; }
    SuggestPreview #strength { height: 1; margin-top: 1; }
    SuggestPreview DataTable { height: 1fr; }
    """

    def __init__(self, model: GridModel, insight: Analysis, suggestion: Suggestion) -> None:
        super().__init__()
        self.grid_model = model
        self.insight = insight
        self.suggestion = suggestion

    title_text = "Suggested values (preview: nothing is changed yet)"

    def compose_body(self) -> ComposeResult:
        lines = suggest_rule_lines(self.grid_model.recipe.method, self.insight.reference)
        yield Static("\n".join(lines), id="rule")
        yield Static(id="strength")
        yield DataTable(id="proposal", zebra_stripes=True, cursor_type="row")
        with Horizontal(classes="buttons"):
            yield Button("Apply (y)", id="apply", variant="primary", compact=True)
            yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self._fill()
        self.query_one("#apply", Button).focus()

    def _fill(self) -> None:
        model = self.grid_model
        suggestion = self.suggestion
        self.query_one("#strength", Static).update(
            f"strength [b]{suggestion.strength:g}[/] (+/- to change) · "
            f"{len(suggestion.changes)} cell(s) change · one undo step"
        )
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_column("layer")
        table.add_column("disagree")
        for c in suggestion.columns:
            column = model.columns[c]
            group = f" {GROUP_LABELS[column.group]}" if GROUP_LABELS[column.group] else ""
            table.add_column(f"{column.title}{group}")
        rows = sorted({r for r, _ in suggestion.changes})
        for r in rows:
            worst = max(v for (row, _), v in suggestion.disagreement.items() if row == r)
            cells = [model.row_label(r), f"{worst:.4f}"]
            for c in suggestion.columns:
                current = model.value(r, c)
                new = suggestion.changes.get((r, c))
                now = format_number(current) if isinstance(current, float) else "·"
                cells.append(f"{now} → {format_number(new)}" if new is not None else now)
            table.add_row(*cells)

    def action_strength(self, direction: int) -> None:
        strength = round(min(1.0, max(0.1, self.suggestion.strength + 0.1 * direction)), 2)
        if strength == self.suggestion.strength:
            return
        try:
            self.suggestion = self.grid_model.suggest(self.insight, strength)
        except GridError as exc:
            self.notify(str(exc), severity="warning")
            return
        self._fill()

    def action_apply(self) -> None:
        self.dismiss(self.suggestion)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.suggestion if event.button.id == "apply" else None)
