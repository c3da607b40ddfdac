"""Fill a row of the layer grid with a preset curve: its shape, low and high, step layer, seed."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from mergetui.editing.presets import PRESET_TITLES, PRESETS, preset_values
from mergetui.tui.dialogs.base import DialogScreen


@dataclass
class PresetChoice:
    name: str
    low: float
    high: float
    at_layer: int | None = None
    seed: int | None = None


class PresetDialog(DialogScreen):
    """Pick a curve and its numbers; enter on the list or in a field applies it."""

    DEFAULT_CSS = """
    PresetDialog OptionList { height: 11; }
    PresetDialog #fields { height: auto; grid-size: 4; grid-gutter: 0 1; grid-rows: 1 1; margin-top: 1; }
    """

    def __init__(self, low: float, high: float, layers: tuple[int, int], target: str) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.layer_span = layers
        self.target = target
        self.title_text = f"Fill with a preset · {target}"

    def compose_body(self) -> ComposeResult:
        yield OptionList(
            *(
                Option(f"{PRESET_TITLES[key]:<16} {curve_preview(key)}  {PRESETS[key]}", id=key)
                for key in PRESETS
            ),
            id="presets",
        )
        with Grid(id="fields"):
            yield Label("low")
            yield Label("high")
            yield Label("step at layer")
            yield Label("seed")
            yield Input(f"{self.low:g}", id="low", type="number", compact=True)
            yield Input(f"{self.high:g}", id="high", type="number", compact=True)
            middle = (self.layer_span[0] + self.layer_span[1] + 1) // 2
            yield Input(str(middle), id="at", type="integer", compact=True)
            yield Input("0", id="seed", type="integer", compact=True)
        yield Static(
            "tab to the fields · enter applies · escape cancels", classes="hint", id="message"
        )

    def on_mount(self) -> None:
        self.query_one(OptionList).highlighted = 0
        self.query_one(OptionList).focus()

    def _choice(self) -> PresetChoice | None:
        options = self.query_one(OptionList)
        message = self.query_one("#message", Static)
        if options.highlighted is None:
            return None
        key = options.get_option_at_index(options.highlighted).id
        try:
            low = float(self.query_one("#low", Input).value)
            high = float(self.query_one("#high", Input).value)
            at_text = self.query_one("#at", Input).value.strip()
            seed_text = self.query_one("#seed", Input).value.strip()
            at_layer = int(at_text) if at_text else None
            seed = int(seed_text) if seed_text else None
        except ValueError:
            message.update("low and high must be numbers; layer and seed whole numbers")
            message.add_class("error")
            return None
        return PresetChoice(str(key), low, high, at_layer, seed)

    @on(OptionList.OptionSelected)
    @on(Input.Submitted)
    def apply(self) -> None:
        choice = self._choice()
        if choice is not None:
            self.dismiss(choice)


def curve_preview(name: str, width: int = 8) -> str:
    """The preset's shape in block characters, low to high: ▁▂▃▄▅▆▇█ for a ramp up."""
    bars = "▁▂▃▄▅▆▇█"
    values = preset_values(
        name, width, 0.0, 1.0, layers=list(range(width)), at_layer=width // 2, seed=1
    )
    return "".join(bars[min(len(bars) - 1, int(v * (len(bars) - 1) + 0.5))] for v in values)
