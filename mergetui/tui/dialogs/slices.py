"""One slice source: which model, and its layers [start, end)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Input, Label, Select, Static

from mergetui.tui.dialogs.base import DialogScreen


@dataclass
class SliceChoice:
    model: str
    start: int
    end: int


class SliceDialog(DialogScreen):
    """One slice source: which model, and its layers [start, end)."""

    DEFAULT_CSS = """
    SliceDialog #fields { height: auto; grid-size: 3; grid-gutter: 0 1; grid-rows: 1 1; }
    """

    def __init__(
        self,
        title: str,
        models: list[str],
        initial: SliceChoice | None = None,
        layer_counts: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.models = models
        self.initial = initial or SliceChoice(models[0], 0, 0)
        self.layer_counts = layer_counts or {}

    def compose_body(self) -> ComposeResult:
        with Grid(id="fields"):
            yield Label("model")
            yield Label("first layer")
            yield Label("end (exclusive)")
            yield Select(
                [(m, m) for m in self.models],
                value=self.initial.model,
                allow_blank=False,
                id="model",
                compact=True,
            )
            yield Input(str(self.initial.start), id="start", type="integer", compact=True)
            yield Input(str(self.initial.end), id="end", type="integer", compact=True)
        yield Static(self._hint(self.initial.model), classes="hint", id="message")

    def _hint(self, model: str) -> str:
        count = self.layer_counts.get(model)
        known = (
            f"{model} has {count} layers (0..{count - 1})"
            if count
            else f"{model}'s layer count is not known"
        )
        return f"{known} · layers \\[first, end) · enter saves · escape cancels"

    def on_mount(self) -> None:
        self.query_one("#model", Select).focus()

    @on(Select.Changed)
    def model_changed(self, event: Select.Changed) -> None:
        self.query_one("#message", Static).update(self._hint(str(event.value)))

    @on(Input.Submitted)
    def submitted(self) -> None:
        message = self.query_one("#message", Static)
        try:
            start = int(self.query_one("#start", Input).value)
            end = int(self.query_one("#end", Input).value)
        except ValueError:
            message.update("first and end layers must be whole numbers")
            message.add_class("error")
            return
        model = str(self.query_one("#model", Select).value)
        count = self.layer_counts.get(model)
        if start < 0 or end <= start:
            message.update("end must be greater than first (a slice takes layers first..end-1)")
            message.add_class("error")
            return
        if count is not None and end > count:
            message.update(f"{model} has only {count} layers: end can be at most {count}")
            message.add_class("error")
            return
        self.dismiss(SliceChoice(model, start, end))
