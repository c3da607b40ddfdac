"""Small modal dialogs: confirm quit, ask for a path or a number, pick a preset, a method, a slice.

Each returns its answer through `dismiss` (None when cancelled with escape), so callers use
`push_screen(dialog, callback)` and never wait on the UI thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from mergetui.editing.layer_table import PRESET_TITLES, PRESETS, preset_values
from mergetui.recipe.methods import METHODS, REQUIRED, MethodSpec


class PathSuggester(Suggester):
    """Completes file-system paths as you type (the rest of the first matching entry)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        directory, prefix = os.path.split(os.path.expanduser(value))
        folder = Path(directory) if directory else Path(".")
        try:
            names = sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix))
        except OSError:
            return None
        names = [n for n in names if not n.startswith(".") or prefix.startswith(".")]
        if not names or names[0] == prefix:
            return None
        completed = names[0]
        if (folder / completed).is_dir():
            completed += os.sep
        return value + completed[len(prefix) :]


class PathInput(Input):
    """An input with path completion: tab (or the right arrow) accepts the completion shown, as in a
    shell; with no completion showing, tab moves on to the next field as usual."""

    BINDINGS = [Binding("tab", "complete_path", "Complete the path", show=False)]

    def __init__(self, value: str = "", **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(), **kwargs)

    def action_complete_path(self) -> None:
        if self.cursor_at_end and len(self._suggestion) > len(self.value):
            self.value = self._suggestion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()


class DialogScreen(ModalScreen):
    """A centred box; escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    DialogScreen { align: center middle; }
    DialogScreen > .dialog {
        width: 76; max-width: 96%; height: auto; max-height: 92%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    DialogScreen .dialog-title { text-style: bold; color: $text-accent; margin-bottom: 1; }
    DialogScreen .hint { color: $text-muted; }
    DialogScreen .error { color: $text-error; }
    DialogScreen Input { margin-bottom: 0; }
    DialogScreen Input.-textual-compact { background: $panel; }
    DialogScreen Input.-textual-compact:focus { background: $boost; text-style: bold; }
    DialogScreen .buttons { height: auto; align-horizontal: right; margin-top: 1; }
    DialogScreen .buttons Button { margin-left: 1; min-width: 10; }
    """

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmQuit(DialogScreen):
    """Unsaved changes: save, discard or stay. Answers "save", "discard" or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Stay"),
        Binding("s", "answer('save')", "Save"),
        Binding("d", "answer('discard')", "Discard"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.document_name = name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Unsaved changes", classes="dialog-title")
            yield Static(
                f"{self.document_name} has changes that are not saved. Save them before quitting?"
            )
            with Horizontal(classes="buttons"):
                yield Button("Save (s)", id="save", variant="primary")
                yield Button("Discard (d)", id="discard", variant="error")
                yield Button("Stay (esc)", id="stay")

    def on_mount(self) -> None:
        self.query_one("#save", Button).focus()

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "stay" else event.button.id)


class TextPrompt(DialogScreen):
    """Ask for one line of text (a path, a number); answers the text, or None."""

    def __init__(
        self,
        title: str,
        initial: str = "",
        *,
        hint: str = "",
        paths: bool = False,
        placeholder: str = "",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.initial = initial
        self.hint = hint
        self.paths = paths
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            if self.paths:
                yield PathInput(self.initial, placeholder=self.placeholder, id="answer")
            else:
                yield Input(self.initial, placeholder=self.placeholder, id="answer")
            hint = self.hint or "enter to confirm · escape to cancel"
            if self.paths:
                hint += " · tab completes"
            yield Static(hint, classes="hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(value or None)


@dataclass
class ModelChoice:
    name: str
    source: str


class AddModelDialog(DialogScreen):
    """A model by local path or Hub id, with the short name the recipe will call it."""

    def __init__(self, taken: set[str]) -> None:
        super().__init__()
        self.taken = taken

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Add a model", classes="dialog-title")
            yield Label("Local folder or Hugging Face id (org/name)")
            yield PathInput(
                placeholder="./models/my-finetune  or  mistralai/Mistral-7B-v0.1", id="source"
            )
            yield Label("Name in the recipe")
            yield Input(placeholder="derived from the path", id="name")
            yield Static(
                "enter adds it · tab completes a path · escape cancels",
                classes="hint",
                id="message",
            )

    def on_mount(self) -> None:
        self.query_one("#source", Input).focus()

    @on(Input.Changed, "#source")
    def suggest_name(self, event: Input.Changed) -> None:
        self.query_one("#name", Input).placeholder = (
            suggest_model_name(event.value, self.taken) or "name"
        )

    def _refuse(self, text: str, field: Input) -> None:
        message = self.query_one("#message", Static)
        message.update(text)
        message.add_class("error")
        field.focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        """One enter, in either field, adds the model (named from its path unless a name is
        typed); a folder that does not exist is refused here, not later by the validator."""
        source_input = self.query_one("#source", Input)
        name_input = self.query_one("#name", Input)
        source, problem = model_source(source_input.value)
        if source is None:
            self._refuse(problem, source_input)
            return
        name = name_input.value.strip() or suggest_model_name(source, self.taken)
        if not name:
            self._refuse("give the model a name", name_input)
            return
        if name in self.taken:
            self._refuse(
                f"{name!r} is already a model in this recipe: choose another name", name_input
            )
            return
        self.dismiss(ModelChoice(name, source))


def model_source(text: str) -> tuple[str | None, str]:
    """What the recipe stores for a typed model source, or None and why it is refused.

    One form for every local folder: its absolute path (typed relative to the working folder, as
    the completion shows it, or with `~`), the form the Checkpoints screen stores too, so the recipe
    reads the same wherever it is saved. A Hub id stays as typed: `org/name`, or a bare name only
    when that repo is in the local Hugging Face cache. Anything else is a folder that is not there.
    """
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id

    typed = text.strip()
    if not typed:
        return None, "the model's folder or Hub id is needed"
    path = Path(typed).expanduser()
    if path.is_dir():
        return str(path.resolve()), ""
    if path.exists():
        return None, f"{typed} is a file: give the checkpoint's folder"
    if looks_like_hub_id(typed) and ("/" in typed or find_local(typed) is not None):
        return typed, ""
    where = "" if path.is_absolute() else f" in {Path.cwd()}"
    return None, f"no folder {typed}{where} (a Hub id is written org/name): check the path"


def suggest_model_name(source: str, taken: set[str]) -> str:
    """The recipe's short name for a path or Hub id (the core's rule), made unique."""
    from mergetui.recipe.io import derive_model_name

    if not source.strip():
        return ""
    stem = derive_model_name(source)
    name, counter = stem, 2
    while name in taken:
        name = f"{stem}-{counter}"
        counter += 1
    return name


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

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Fill with a preset · {self.target}", classes="dialog-title")
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


def describe_param(param) -> str:
    """`weight (per model, required)`, `density (per model, 1, 0..1)`: for the method details."""
    scope = {"shared": "shared", "input": "per model", "non_base": "per model, not the base"}[
        param.scope
    ]
    parts = [scope]
    if param.default is REQUIRED:
        parts.append("required")
    elif param.default is not None:
        parts.append(f"default {param.default}")
    if param.minimum is not None or param.maximum is not None:
        low = "" if param.minimum is None else f"{param.minimum:g}"
        high = "" if param.maximum is None else f"{param.maximum:g}"
        parts.append(f"{low}..{high}")
    return f"{param.name} ({', '.join(parts)}): {param.description}"


def method_details(spec: MethodSpec) -> str:
    base = {
        "required": "needs a base model",
        "optional": "base model optional",
        "ignored": "no base model",
    }[spec.base]
    lines = [f"[b]{spec.pretty_name}[/b] · {spec.name} · {base}", spec.description]
    if spec.paper:
        lines.append(f"[dim]{spec.paper}[/dim]")
    if spec.params:
        lines.append("")
        lines.extend(f"• {describe_param(p)}" for p in spec.params)
    else:
        lines.append("no parameters")
    return "\n".join(lines)


class MethodPicker(DialogScreen):
    """Every method with its one-line description; the highlighted one's parameters below."""

    DEFAULT_CSS = """
    MethodPicker > .dialog { width: 100; height: 90%; }
    MethodPicker OptionList { height: 50%; text-wrap: nowrap; text-overflow: ellipsis; }
    MethodPicker #details { height: 1fr; margin-top: 1; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Merge method", classes="dialog-title")
            yield OptionList(
                *(
                    Option(
                        Text(
                            f"{spec.name:<17} {spec.description}", no_wrap=True, overflow="ellipsis"
                        ),
                        id=spec.name,
                    )
                    for spec in METHODS.values()
                ),
                id="methods",
            )
            with VerticalScroll(id="details"):
                yield Static(id="details-text")
            yield Static("enter picks · escape keeps the current method", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        names = list(METHODS)
        options.highlighted = names.index(self.current) if self.current in names else 0
        options.focus()

    @on(OptionList.OptionHighlighted)
    def show_details(self, event: OptionList.OptionHighlighted) -> None:
        spec = METHODS[str(event.option.id)]
        self.query_one("#details-text", Static).update(method_details(spec))

    @on(OptionList.OptionSelected)
    def picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(str(event.option.id))


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

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
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
