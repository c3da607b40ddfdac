"""The Recipe screen: method, models, parameters, the per-layer grid, slices and problems.

Four tabs (F6..F9) so it fits 80x24: Setup (method, models, shared parameters, output), Layers (the
grid), Slices (layer stacks) and Problems (the validator's findings, refreshed on every edit). Every
change goes through the document (`with document.edit(...)`), which gives undo/redo for free, then
`recipe_changed()` refreshes the panes, the validation and the title.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Header,
    Input,
    Label,
    OptionList,
    Select,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option

from mergetui.editing.cells import GROUP_LABELS, GridError, format_number
from mergetui.editing.layer_table import GridModel
from mergetui.editing.suggest import SUGGEST_STRENGTH, Suggestion, suggest_rule_lines
from mergetui.editing.tensor_names import TensorNames
from mergetui.errors import CancelledError, UserError
from mergetui.merge.analysis import METRIC_DESCRIPTIONS, METRIC_TITLES, Analysis
from mergetui.recipe.methods import METHODS, REQUIRED, ParamSpec
from mergetui.recipe.model import Conditional, ModelEntry, Slice, SliceSource
from mergetui.tui.commands import PaletteCommand
from mergetui.tui.dialogs.base import DialogScreen
from mergetui.tui.dialogs.methods import MethodPicker, describe_param
from mergetui.tui.dialogs.models import AddModelDialog, ModelChoice
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.dialogs.presets import PresetChoice, PresetDialog
from mergetui.tui.dialogs.slices import SliceChoice, SliceDialog
from mergetui.tui.footer import KeyFooter
from mergetui.tui.grid import GRID_ACTIONS, LayerGrid
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.status_line import StatusLine

DTYPES = ("float32", "float16", "bfloat16")
OUTPUT_SOURCE = "output"  # metrics between the merge output and each parent
PARENTS_SOURCE = "parents"  # metrics between the parents and the reference (base)
TABS = ("setup", "layers", "slices", "problems")
CHECK_DELAY = 0.3  # seconds without edits before the checkpoint checks run


@dataclass
class CheckpointFacts:
    """What the app knows about a model's checkpoint (from its headers), or why it knows nothing."""

    path: Path | None = None
    num_layers: int | None = None
    parameters: int | None = None
    layer_parameters: int | None = None  # parameters in one layer
    names: list[str] = field(default_factory=list)
    error: str | None = None


def human_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def value_text(value: Any) -> str:
    """A parameter value as the form shows it (the TOML-ish spelling a person would type)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_number(float(value), precise=True) if isinstance(value, float) else str(value)
    if isinstance(value, list) and not any(isinstance(v, Conditional) for v in value):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return "per filter (see Layers tab)"


def problem_text(problem: Any, severity: str) -> Text:
    """A validator finding as wrapped text: mark, where, what and how to fix it."""
    mark = {"error": "✗", "warning": "!"}.get(severity, "i")
    style = {"error": "bold red", "warning": "bold yellow"}.get(severity, "bold")
    where = getattr(problem, "location", None) or getattr(problem, "where", None) or "recipe"
    text = Text.assemble((f"{mark} ", style), (str(where), "bold"), "\n  ")
    text.append(getattr(problem, "message", str(problem)))
    fix = getattr(problem, "fix", None)
    if fix:
        text.append(f"\n  fix: {fix}", style="dim")
    return text


def parse_param_text(text: str, param: ParamSpec) -> Any:
    """What a person typed into a parameter field: a number, true/false, or a gradient list."""
    text = text.strip()
    if not text:
        return None
    if param.type == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{param.name} is true or false, not {text!r}", where=param.name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(
            f"{text!r} is not a number",
            where=param.name,
            fix="type a number like 0.5, or a gradient like [0, 0.5, 1]",
        ) from None
    numbers = value if isinstance(value, list) else [value]
    if not numbers or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers
    ):
        raise UserError(
            f"{text!r} is not a number or a list of numbers",
            where=param.name,
            fix="type a number like 0.5, or a gradient like [0, 0.5, 1]",
        )
    if param.type == "int":
        if isinstance(value, list) or float(value) != int(value):
            raise UserError(f"{param.name} takes a whole number", where=param.name)
        return int(value)
    return [float(v) for v in value] if isinstance(value, list) else float(value)


# ---------------------------------------------------------------------------------------------------
# Widgets of the Setup tab


class SetupPane(VerticalScroll):
    """The Setup tab; its model keys work wherever the focus is in the tab (not only in the list)."""

    BINDINGS = [
        Binding("a", "screen.add_model", "Add model", show=False),
        Binding("x,delete", "screen.remove_model", "Remove model", show=False),
        Binding("b", "screen.toggle_base", "Mark/unmark base", show=False),
        Binding("shift+up", "screen.move_model(-1)", "Move model up", show=False),
        Binding("shift+down", "screen.move_model(1)", "Move model down", show=False),
    ]


class SlicesPane(Vertical):
    """The Slices tab: one row per slice source, the layer stack top to bottom."""

    BINDINGS = [
        Binding("a", "screen.add_slice", "Add slice", show=False),
        Binding("s", "screen.add_source", "Add source to slice", show=False),
        Binding("e", "screen.edit_slice", "Edit slice source (or enter)", show=False),
        Binding("x,delete", "screen.remove_slice", "Remove slice source", show=False),
        Binding("shift+up", "screen.move_slice(-1)", "Move slice up", show=False),
        Binding("shift+down", "screen.move_slice(1)", "Move slice down", show=False),
    ]


class ParamField(Horizontal):
    """One shared parameter: its name, an input (a checkbox for booleans) and what it means."""

    def __init__(self, param: ParamSpec, value: Any) -> None:
        super().__init__(classes="param-field")
        self.param = param
        self.value = value

    def compose(self) -> ComposeResult:
        yield Label(self.param.name, classes="param-name")
        if self.param.type == "bool":
            checked = self._checked(self.value)
            yield Checkbox(
                bool_label(checked), checked, id=f"param-{self.param.name}", compact=True
            )
        else:
            default = (
                "" if self.param.default in (REQUIRED, None) else f"default {self.param.default}"
            )
            yield Input(
                value_text(self.value),
                placeholder="required" if self.param.required else default,
                id=f"param-{self.param.name}",
                disabled=_per_filter(self.value),
                classes="param-input",
                compact=True,
            )
        yield Static(describe_param(self.param).split(": ", 1)[-1], classes="param-hint")

    def _checked(self, value: Any) -> bool:
        return value if isinstance(value, bool) else bool(self.param.default is True)

    def show(self, value: Any) -> None:
        """Show a value that changed elsewhere (undo, the grid), unless the field is being edited."""
        self.value = value
        widget = self.query_one(f"#param-{self.param.name}")
        if widget.has_focus:
            return
        if isinstance(widget, Checkbox):
            with widget.prevent(Checkbox.Changed):
                widget.value = self._checked(value)
            widget.label = bool_label(widget.value)
        elif isinstance(widget, Input):
            widget.value = value_text(value)
            widget.disabled = _per_filter(value)


def bool_label(value: bool) -> str:
    """Say the state in words: a checkbox's mark alone is easy to misread in 16 colours."""
    return "true" if value else "false"


def _per_filter(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(v, Conditional) for v in items)


# ---------------------------------------------------------------------------------------------------
# Merge insight dialogs


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
        entries = [
            (metric, PARENTS_SOURCE, METRIC_DESCRIPTIONS[metric])
            for metric in ("cosine", "distance", "agreement")
        ]
        if self.output is not None:
            entries += [
                ("cosine", OUTPUT_SOURCE, "cosine of each parent to the merge output"),
                ("distance", OUTPUT_SOURCE, "distance |parent - output| / |output|"),
                ("agreement", OUTPUT_SOURCE, "sign agreement of (parent - output) across parents"),
            ]
        return entries

    def compose(self) -> ComposeResult:
        entries = self.choices()
        with Vertical(classes="dialog"):
            yield Label("Overlay metric", classes="dialog-title")
            yield OptionList(
                *(
                    Option(
                        Text.assemble(
                            (f"{METRIC_TITLES[m]:<6}", "bold"),
                            ("output " if src == OUTPUT_SOURCE else "parents ", "dim"),
                            text,
                        ),
                        id=f"{m}:{src}",
                    )
                    for m, src, text in entries
                ),
                id="metrics",
            )
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

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(
                "Suggested values (preview: nothing is changed yet)", classes="dialog-title"
            )
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


# ---------------------------------------------------------------------------------------------------
# The screen


class RecipeScreen(ModeScreen):
    """Build a recipe: method, models, parameters, the per-layer grid, slices, problems."""

    DEFAULT_CSS = """
    RecipeScreen #insight-note { height: 1; padding: 0 1; color: $text-muted; overflow: hidden; }
    """

    BINDINGS = [
        Binding("ctrl+s", "app.save", "Save"),  # the app's key, shown in this footer only
        Binding("f6", "tab('setup')", "Setup tab", show=False),
        Binding("f7", "tab('layers')", "Layers tab", show=False),
        Binding("f8", "tab('slices')", "Slices tab", show=False),
        Binding("f9", "tab('problems')", "Problems tab", show=False),
        Binding("ctrl+z", "undo", "Undo", show=False),
        Binding("ctrl+y", "redo", "Redo", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.facts: dict[str, CheckpointFacts] = {}
        self._facts_key: tuple = ()
        self.problems: list[Any] = []
        self.prompt_kind: str | None = None
        self.layer_override: int | None = None
        self._check_timer = None
        # Merge insight: the metric shown, whether the overlay is wanted, results per source.
        self.overlay_on = False
        self.overlay_metric = "cosine"
        self.overlay_source = PARENTS_SOURCE
        self.insights: dict[str, tuple[tuple, Analysis]] = {}
        self._insight_cancel: threading.Event | None = None
        self._insight_running: tuple | None = None
        self._insight_percent = -1
        self._suggest_pending = False
        config = self.app.config
        self.grid_model = GridModel(
            self.app.document,
            split=config.split_filters,
            step=config.nudge_step or 0.05,
        )

    @property
    def document(self):
        return self.app.document

    @property
    def recipe(self):
        return self.app.document.recipe

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        initial = "layers" if self.recipe.models else "setup"
        with TabbedContent(id="recipe-tabs", initial=initial):
            with TabPane("Setup [dim]F6[/]", id="setup"):
                with SetupPane(id="setup-scroll"):
                    yield Label("Method", classes="section")
                    with Horizontal(id="method-row"):
                        yield Button("method", id="method-button", compact=True)
                        yield Static(id="method-summary")
                    yield Static(id="method-params", classes="hint")
                    yield Label(
                        "Models  [dim]a add · x remove · b base · shift+↑↓ move[/]",
                        classes="section",
                    )
                    yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
                    yield Label("Shared parameters", classes="section")
                    yield Vertical(id="params-form")
                    yield Label("Output", classes="section")
                    with Horizontal(classes="param-field"):
                        yield Label("output", classes="param-name")
                        yield Input(
                            placeholder="folder for the merged model",
                            id="output",
                            classes="param-input",
                            compact=True,
                        )
                    with Horizontal(classes="param-field"):
                        yield Label("dtype", classes="param-name")
                        yield Select(
                            [(d, d) for d in DTYPES], prompt="model's own", id="dtype", compact=True
                        )
                    with Horizontal(classes="param-field"):
                        yield Label("seed", classes="param-name")
                        yield Input(
                            placeholder="none",
                            id="seed",
                            type="integer",
                            classes="param-input",
                            compact=True,
                        )
            with TabPane("Layers [dim]F7[/]", id="layers"):
                yield Static(
                    "[b]⏎[/] edit · [b]+/-[/] nudge · [b]⇧arrows[/] select · [b]p[/] preset · "
                    "[b]f[/] split · [b]o[/] metrics · [b]F1[/] keys",
                    id="grid-keys",
                    classes="hint",
                )
                yield Static(id="grid-note")
                yield Static(id="insight-note")
                yield LayerGrid(self.grid_model, id="grid")
                with Horizontal(id="curve"):
                    yield Static(id="curve-label")
                    yield Sparkline([], id="sparkline")
                with Horizontal(id="grid-prompt"):
                    yield Label("", id="grid-prompt-label")
                    # No select-all on focus: the key that opened the prompt is its first
                    # character, and the next one typed must follow it, not replace it.
                    yield Input(id="grid-prompt-input", select_on_focus=False)
            with TabPane("Slices [dim]F8[/]", id="slices"):
                with SlicesPane(id="slices-pane"):
                    yield Static(id="slices-help", classes="hint")
                    yield DataTable(id="slices-table", cursor_type="row", zebra_stripes=True)
                    yield Static(id="slices-summary")
            with TabPane("Problems [dim]F9[/]", id="problems"):
                yield Static(id="problems-summary")
                yield OptionList(id="problems-table")
        yield StatusLine(id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#models", DataTable).add_columns("base", "name", "source", "layers")
        self.query_one("#slices-table", DataTable).add_columns("slice", "model", "layers", "count")
        self.query_one("#grid-prompt").display = False
        self.query_one("#insight-note").display = False
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._apply_heatmap())
        self._apply_heatmap()
        self.recipe_changed(initial=True)

    def on_screen_resume(self) -> None:
        self.app.refresh_title()

    def _apply_heatmap(self) -> None:
        self.query_one(LayerGrid).set_heatmap(self.app.heatmap)

    # -- refresh after any change --------------------------------------------------------------

    def reload_document(self) -> None:
        """The app opened another recipe: start the panes over on it."""
        self.grid_model.document = self.app.document
        self.facts.clear()
        self._facts_key = ()
        self.recipe_changed(initial=True)
        self.query_one(TabbedContent).active = "layers" if self.recipe.models else "setup"

    def recipe_changed(self, initial: bool = False) -> None:
        """Refresh everything that shows the recipe (after an edit, undo, redo or open)."""
        self._refresh_method()
        self._refresh_models()
        self._refresh_params()
        self._refresh_output()
        self._refresh_grid()
        self._refresh_slices()
        self._validate()
        self._maybe_load_checkpoints()
        self.app.refresh_title()

    def _refresh_method(self) -> None:
        spec = METHODS.get(self.recipe.method)
        button = self.query_one("#method-button", Button)
        button.label = f"{self.recipe.method} ▾"
        summary = self.query_one("#method-summary", Static)
        params = self.query_one("#method-params", Static)
        if spec is None:
            summary.update(f"[b]unknown method {self.recipe.method!r}[/]: press enter to pick one")
            params.update("")
            return
        summary.update(f"[b]{spec.pretty_name}[/] — {spec.description}")
        per_model = ", ".join(p.name for p in spec.per_model_params) or "none"
        shared = ", ".join(p.name for p in spec.shared_params) or "none"
        base = {"required": "needs a base", "optional": "base optional", "ignored": "no base"}[
            spec.base
        ]
        params.update(
            f"{base} · per-model: {per_model} · shared: {shared}"
            + (f" · {spec.paper}" if spec.paper else "")
        )

    def _refresh_models(self) -> None:
        table = self.query_one("#models", DataTable)
        keep = table.cursor_row
        table.clear()
        for name, entry in self.recipe.models.items():
            facts = self.facts.get(name)
            if facts is None:
                layers = "…"
            elif facts.num_layers is not None:
                layers = str(facts.num_layers)
            else:
                layers = "?"
            source = entry.reference
            table.add_row("★" if name == self.recipe.base else "", name, source, layers, key=name)
        if self.recipe.models:
            table.move_cursor(row=min(keep, len(self.recipe.models) - 1))

    def _refresh_params(self) -> None:
        """Rebuild the form when the method changes; otherwise update the fields in place."""
        form = self.query_one("#params-form", Vertical)
        spec = METHODS.get(self.recipe.method)
        shared = list(spec.shared_params) if spec else []
        signature = (self.recipe.method, tuple(p.name for p in shared))
        if getattr(form, "_signature", None) != signature:
            form._signature = signature
            form.remove_children()
            if not shared:
                form.mount(Static("this method has no shared parameters", classes="hint"))
                return
            form.mount_all([ParamField(p, self.recipe.parameters.get(p.name)) for p in shared])
            return
        for field_ in form.query(ParamField):
            field_.show(self.recipe.parameters.get(field_.param.name))

    def _refresh_output(self) -> None:
        output = self.query_one("#output", Input)
        if not output.has_focus:
            output.value = self.recipe.output or ""
        seed = self.query_one("#seed", Input)
        if not seed.has_focus:
            seed.value = "" if self.recipe.seed is None else str(self.recipe.seed)
        dtype = self.query_one("#dtype", Select)
        wanted = self.recipe.dtype if self.recipe.dtype in DTYPES else Select.NULL
        if dtype.value != wanted:
            with dtype.prevent(Select.Changed):
                dtype.value = wanted

    def _refresh_grid(self) -> None:
        model = self.grid_model
        model.layer_counts = {n: f.num_layers for n, f in self.facts.items() if f.num_layers}
        model.assumed_layers = self.layer_override
        model.names = self._tensor_names() or model.names
        self._sync_overlay()
        model.rebuild()
        self.query_one(LayerGrid).refresh_model()
        note = self.query_one("#grid-note", Static)
        note.update(f"⚠ {model.layer_note}" if model.layer_note else "")
        note.display = bool(model.layer_note)

    def _tensor_names(self) -> TensorNames | None:
        for name in self.recipe.models:
            facts = self.facts.get(name)
            if facts and facts.names:
                names = TensorNames.from_names(facts.names)
                if names is not None:
                    return names
        return None

    def _refresh_slices(self) -> None:
        help_text = self.query_one("#slices-help", Static)
        table = self.query_one("#slices-table", DataTable)
        summary = self.query_one("#slices-summary", Static)
        keep = table.cursor_row
        table.clear()
        if self.recipe.slices is None:
            help_text.update(
                "This recipe merges whole models (every layer of each). To build a layer stack "
                "(a frankenmerge, depth up-scaling), press [b]a[/] to add the first slice.\n"
                "[dim]a add slice · s add a source to a slice · e edit · x remove · shift+↑↓ move[/]"
            )
            summary.update("")
            return
        help_text.update(
            "Output layers, top to bottom: each slice takes layers \\[first, end) of its sources.\n"
            "[dim]a add slice · s add a source to a slice · e edit · x remove · shift+↑↓ move[/]"
        )
        for index, slice_ in enumerate(self.recipe.slices):
            for position, source in enumerate(slice_.sources):
                start, end = source.layer_range
                table.add_row(
                    str(index + 1) if position == 0 else "",
                    source.model,
                    f"[{start}, {end}]",  # as the file says it: layers = [first, end)
                    str(end - start),
                    key=f"{index}:{position}",
                )
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1))
        summary.update(self._stack_summary())

    def _stack_summary(self) -> str:
        """Resulting layer count and, when the checkpoints are readable, the parameter count."""
        slices = self.recipe.slices or []
        layers = sum(s.num_layers for s in slices)
        text = f"{len(slices)} slice(s) · {layers} output layers"
        total = 0.0
        for slice_ in slices:
            source = slice_.sources[0] if slice_.sources else None
            facts = self.facts.get(source.model) if source else None
            if not facts or facts.layer_parameters is None:
                return text + " · parameter estimate needs the checkpoints' headers"
            total += facts.layer_parameters * slice_.num_layers
        first = self.facts.get(slices[0].sources[0].model) if slices and slices[0].sources else None
        if (
            first
            and first.parameters is not None
            and first.num_layers
            and first.layer_parameters is not None
        ):
            total += first.parameters - first.layer_parameters * first.num_layers
        return text + f" · ≈ {human_count(total)} parameters"

    # -- validation ----------------------------------------------------------------------------

    def _base_dir(self) -> Path:
        from mergetui.recipe.paths import recipe_folder

        return recipe_folder(self.document.path or self.document.origin)

    def _validate(self) -> None:
        from mergetui.recipe.validate import validate_recipe

        try:
            problems = validate_recipe(self.recipe, offline=True, base_dir=self._base_dir())
        except UserError as exc:
            problems = [exc]
        self._show_problems(problems)
        # The checks that read checkpoint headers wait for a pause in the typing.
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(CHECK_DELAY, self._validate_checkpoints)

    @work(thread=True, exclusive=True, group="validate", exit_on_error=False)
    def _validate_checkpoints(self) -> None:
        """The slower checks that read checkpoint headers, off the UI thread."""
        import copy

        from mergetui.recipe.validate import validate_recipe

        recipe = copy.deepcopy(self.recipe)
        try:
            problems = validate_recipe(recipe, offline=False, base_dir=self._base_dir())
        except UserError as exc:
            problems = [exc]
        except Exception as exc:  # a checkpoint that cannot be read is a finding, not a crash
            problems = [UserError(f"checking the checkpoints failed: {exc}")]
        self._reply(self._checked, recipe, problems)

    def _reply(self, callback, *args: Any) -> None:
        """Hand a worker's result to the UI thread, unless the app closed while it ran."""
        try:
            self.app.call_from_thread(callback, *args)
        except RuntimeError:
            pass

    def _checked(self, recipe, problems: list[Any]) -> None:
        if not self.is_mounted:
            return
        if recipe == self.recipe:  # ignore answers about a recipe that has changed since
            self._show_problems(problems)

    def _show_problems(self, problems: list[Any]) -> None:
        self.problems = problems
        listing = self.query_one("#problems-table", OptionList)
        listing.clear_options()
        errors = warnings = 0
        for problem in problems:
            severity = getattr(problem, "level", None) or getattr(problem, "severity", "error")
            if severity == "error":
                errors += 1
            else:
                warnings += 1
            listing.add_option(Option(problem_text(problem, severity)))
        summary = self.query_one("#problems-summary", Static)
        if not problems:
            summary.update("[b]✓ No problems found.[/] The validator re-checks on every edit.")
        else:
            summary.update(
                f"[b]{errors} error(s), {warnings} warning(s)[/] · updated on every edit"
            )
        tabs = self.query_one(TabbedContent)
        label = f"Problems ({len(problems)}) [dim]F9[/]" if problems else "Problems [dim]F9[/]"
        tabs.get_tab("problems").label = label
        self._refresh_status()

    def _refresh_status(self) -> None:
        errors = sum(1 for p in self.problems if (getattr(p, "level", None) or "error") == "error")
        warnings = len(self.problems) - errors
        if errors:
            state = f"[b $error]✗ {errors} error(s)[/]" + (
                f" {warnings} warning(s)" if warnings else ""
            )
        elif warnings:
            state = f"[b $warning]! {warnings} warning(s)[/]"
        else:
            state = "[b $success]✓ valid[/]"
        model = self.grid_model
        grid = self.query_one(LayerGrid)
        parts = [state]
        if model.columns and model.rows:
            parts.append(model.describe(*grid.cursor))
            if grid.anchor is not None:
                parts.append(f"{grid.selection.size} selected")
        parts.append(f"step {format_number(model.step, precise=True)}")
        self.query_one("#status", StatusLine).show(parts)

    # -- checkpoints (headers, in a worker) ----------------------------------------------------

    def _maybe_load_checkpoints(self) -> None:
        key = tuple((n, e.source, e.revision) for n, e in self.recipe.models.items())
        missing = [n for n in self.recipe.models if n not in self.facts]
        if key == self._facts_key and not missing:
            return
        self._facts_key = key
        sources = {n: (e.source, e.revision) for n, e in self.recipe.models.items()}
        self._load_checkpoints(sources, self._base_dir())

    @work(thread=True, exclusive=True, group="checkpoints", exit_on_error=False)
    def _load_checkpoints(self, sources: dict[str, tuple[str, str | None]], base_dir: Path) -> None:
        facts = {
            name: read_checkpoint_facts(source, revision, base_dir)
            for name, (source, revision) in sources.items()
        }
        self._reply(self._checkpoints_loaded, facts)

    def _checkpoints_loaded(self, facts: dict[str, CheckpointFacts]) -> None:
        if not self.is_mounted:
            return
        self.facts.update(facts)
        self._refresh_models()
        self._refresh_grid()
        self._refresh_slices()

    # -- tabs, undo ----------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._focus_tab(tab)

    def _focus_tab(self, tab: str) -> None:
        target = {
            "setup": "#method-button",
            "layers": "#grid",
            "slices": "#slices-table",
            "problems": "#problems-table",
        }[tab]
        self.query_one(target).focus()

    @on(TabbedContent.TabActivated)
    def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "layers":
            self.query_one(LayerGrid).focus()

    def action_undo(self) -> None:
        label = self.document.undo()
        if label is None:
            self.notify("nothing to undo", timeout=2)
            return
        self.recipe_changed()
        self.notify(f"undid: {label}", timeout=2)

    def action_redo(self) -> None:
        label = self.document.redo()
        if label is None:
            self.notify("nothing to redo", timeout=2)
            return
        self.recipe_changed()
        self.notify(f"redid: {label}", timeout=2)

    def edit(self, label: str):
        return self.document.edit(label)

    # -- method --------------------------------------------------------------------------------

    @on(Button.Pressed, "#method-button")
    def action_pick_method(self) -> None:
        self.app.push_screen(MethodPicker(self.recipe.method), self._method_picked)

    def _method_picked(self, name: str | None) -> None:
        if not name or name == self.recipe.method:
            return
        with self.edit(f"method {name}"):
            self.recipe.method = name
        self.recipe_changed()

    # -- models --------------------------------------------------------------------------------

    def _selected_model(self) -> str | None:
        table = self.query_one("#models", DataTable)
        if not self.recipe.models or table.row_count == 0:
            return None
        return list(self.recipe.models)[min(table.cursor_row, len(self.recipe.models) - 1)]

    def action_add_model(self) -> None:
        self.app.push_screen(AddModelDialog(set(self.recipe.models)), self._model_added)

    def _model_added(self, choice: ModelChoice | None) -> None:
        if choice is None:
            return
        with self.edit(f"add model {choice.name}"):  # a folder's absolute path, or a Hub id
            self.recipe.models[choice.name] = ModelEntry(choice.name, choice.source)
            spec = METHODS.get(self.recipe.method)
            if self.recipe.base is None and spec is not None and spec.base == "required":
                self.recipe.base = choice.name
        self.recipe_changed()
        table = self.query_one("#models", DataTable)
        table.move_cursor(row=len(self.recipe.models) - 1)

    def action_remove_model(self) -> None:
        name = self._selected_model()
        if name is None:
            return
        in_slices = [
            i + 1
            for i, s in enumerate(self.recipe.slices or [])
            if any(src.model == name for src in s.sources)
        ]
        if in_slices:
            self.notify(
                f"{name} feeds slice(s) {', '.join(map(str, in_slices))}: remove those first (Slices tab)",
                severity="warning",
            )
            return
        with self.edit(f"remove model {name}"):
            del self.recipe.models[name]
            if self.recipe.base == name:
                self.recipe.base = None
        self.recipe_changed()

    def action_toggle_base(self) -> None:
        name = self._selected_model()
        if name is None:
            return
        with self.edit(f"base {name}"):
            self.recipe.base = None if self.recipe.base == name else name
        self.recipe_changed()

    def action_move_model(self, direction: int) -> None:
        name = self._selected_model()
        if name is None:
            return
        names = list(self.recipe.models)
        index = names.index(name)
        target = index + direction
        if not 0 <= target < len(names):
            return
        names[index], names[target] = names[target], names[index]
        with self.edit(f"move model {name}"):
            self.recipe.models = {n: self.recipe.models[n] for n in names}
        self.recipe_changed()
        self.query_one("#models", DataTable).move_cursor(row=target)

    # -- shared parameters and output ----------------------------------------------------------

    def _set_param(self, param: ParamSpec, value: Any) -> None:
        current = self.recipe.parameters.get(param.name)
        if value == current and (value is not None or param.name not in self.recipe.parameters):
            return
        with self.edit(f"{param.name} = {value_text(value) or 'default'}"):
            if value is None:
                self.recipe.parameters.pop(param.name, None)
            else:
                self.recipe.parameters[param.name] = value
        self.recipe_changed()

    def _param_input(self, widget: Input) -> None:
        field_ = widget.parent
        if not isinstance(field_, ParamField) or widget.disabled:
            return
        try:
            value = parse_param_text(widget.value, field_.param)
        except UserError as exc:
            self.notify(str(exc), severity="error")
            return
        self._set_param(field_.param, value)

    @on(Input.Submitted, ".param-input")
    def param_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id in ("output", "seed"):
            self._output_input(event.input)
        else:
            self._param_input(event.input)

    @on(Input.Blurred, ".param-input")
    def param_blurred(self, event: Input.Blurred) -> None:
        if event.input.id in ("output", "seed"):
            self._output_input(event.input)
        else:
            self._param_input(event.input)

    @on(Checkbox.Changed)
    def switch_changed(self, event: Checkbox.Changed) -> None:
        field_ = event.checkbox.parent
        if isinstance(field_, ParamField):
            event.checkbox.label = bool_label(event.value)
            self._set_param(field_.param, event.value)

    def _output_input(self, widget: Input) -> None:
        text = widget.value.strip()
        if widget.id == "output":
            value = text or None
            if value != self.recipe.output:
                with self.edit("output"):
                    self.recipe.output = value
                self.recipe_changed()
        else:
            try:
                seed = int(text) if text else None
            except ValueError:
                self.notify("the seed is a whole number", severity="error")
                return
            if seed != self.recipe.seed:
                with self.edit("seed"):
                    self.recipe.seed = seed
                self.recipe_changed()

    @on(Select.Changed, "#dtype")
    def dtype_changed(self, event: Select.Changed) -> None:
        value = None if event.value is Select.NULL else str(event.value)
        if value != self.recipe.dtype:
            with self.edit(f"dtype {value or 'default'}"):
                self.recipe.dtype = value
            self.recipe_changed()

    # -- the grid ------------------------------------------------------------------------------

    @on(LayerGrid.CursorMoved)
    def grid_cursor_moved(self) -> None:
        self._refresh_status()
        self._refresh_curve()

    @on(LayerGrid.SettingsChanged)
    def grid_settings_changed(self) -> None:
        config = self.app.config
        config.nudge_step = self.grid_model.step
        config.split_filters = self.grid_model.split
        self.app.save_config()

    @on(LayerGrid.Edited)
    def grid_edited(self, event: LayerGrid.Edited) -> None:
        self.recipe_changed()

    def _refresh_curve(self) -> None:
        model = self.grid_model
        grid = self.query_one(LayerGrid)
        label = self.query_one("#curve-label", Static)
        sparkline = self.query_one("#sparkline", Sparkline)
        if not model.columns:
            label.update("")
            sparkline.data = []
            return
        col = grid.cursor[1]
        values = [v for v in model.column_values(col) if v is not None]
        column = model.columns[col]
        group = f" {GROUP_LABELS[column.group]}" if GROUP_LABELS[column.group] else ""
        if values:
            span = f"{format_number(min(values))}..{format_number(max(values))}"
            low = min(values)
            sparkline.data = [v - low for v in values] if max(values) > low else [1.0] * len(values)
        else:
            span = "no values yet"
            sparkline.data = []
        sparkline.display = bool(values)
        label.update(f"{column.title}{group} {span} ")

    @on(LayerGrid.PromptRequested)
    def grid_prompt(self, event: LayerGrid.PromptRequested) -> None:
        prompt = self.query_one("#grid-prompt")
        field_ = self.query_one("#grid-prompt-input", Input)
        if event.typed and self.prompt_kind == "set" and prompt.display:
            # A key typed before the open prompt took focus: it continues the number.
            field_.insert_text_at_cursor(event.initial)
            return
        grid = self.query_one(LayerGrid)
        area = grid.selection
        what = {"set": "set", "add": "add to", "multiply": "multiply"}[event.kind]
        cells = "1 cell" if area.size == 1 else f"{area.size} cells"
        self.prompt_kind = event.kind
        self.query_one("#grid-prompt-label", Label).update(f"{what} {cells}: ")
        prompt.display = True
        field_.value = event.initial
        field_.focus()
        field_.cursor_position = len(event.initial)

    def _close_prompt(self) -> None:
        self.prompt_kind = None
        self.query_one("#grid-prompt").display = False
        self.query_one(LayerGrid).focus()

    @on(Input.Submitted, "#grid-prompt-input")
    def grid_prompt_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        kind = self.prompt_kind
        text = event.value.strip()
        self._close_prompt()
        if not kind or not text:
            return
        try:
            number = float(text)
        except ValueError:
            self.notify(f"{text!r} is not a number", severity="error")
            return
        grid = self.query_one(LayerGrid)
        operation = {
            "set": self.grid_model.set_value,
            "add": self.grid_model.add,
            "multiply": self.grid_model.multiply,
        }[kind]
        grid.run_operation(kind, operation, grid.selection, number)

    def on_key(self, event) -> None:
        if event.key == "escape" and self.prompt_kind is not None:
            event.stop()
            self._close_prompt()

    @on(LayerGrid.PresetRequested)
    def grid_preset(self) -> None:
        grid = self.query_one(LayerGrid)
        model = self.grid_model
        area = grid.column_area()
        rows = model.layer_rows(area.rows)
        if not rows:
            self.notify("select layer rows to fill", severity="warning")
            return
        if model.columns[area.left].metric:
            self.notify("metric columns are read-only: pick a parameter column", severity="warning")
            return
        spec = model.spec_of(area.left)
        low = spec.minimum if spec.minimum is not None else 0.0
        high = spec.maximum if spec.maximum is not None else 1.0
        layers = (model.rows[rows[0]].layer, model.rows[rows[-1]].layer)
        columns = {model.columns[c].title for c in area.columns}
        target = f"{', '.join(sorted(columns))} · layers {layers[0]}..{layers[1]}"
        self.app.push_screen(
            PresetDialog(low, high, layers, target), partial(self._preset_chosen, area)
        )

    def _preset_chosen(self, area, choice: PresetChoice | None) -> None:
        grid = self.query_one(LayerGrid)
        grid.focus()
        if choice is None:
            return
        grid.run_operation(
            f"preset {choice.name}",
            self.grid_model.preset,
            area,
            choice.name,
            choice.low,
            choice.high,
            at_layer=choice.at_layer,
            seed=choice.seed,
        )

    def action_set_layer_count(self) -> None:
        current, _ = self.grid_model.model_layers()
        self.app.push_screen(
            TextPrompt(
                "Layer count of the models",
                str(current),
                hint="used when the checkpoints cannot be read (a Hub model not downloaded yet)",
            ),
            self._layer_count_set,
        )

    def _layer_count_set(self, text: str | None) -> None:
        if text is None:
            return
        try:
            count = int(text)
            if count < 1:
                raise ValueError
        except ValueError:
            self.notify("the layer count is a whole number above 0", severity="error")
            return
        self.layer_override = count
        self._refresh_grid()

    def action_set_step(self) -> None:
        self.app.push_screen(
            TextPrompt("Nudge step for + and -", format_number(self.grid_model.step, precise=True)),
            self._step_set,
        )

    def _step_set(self, text: str | None) -> None:
        if text is None:
            return
        try:
            step = float(text)
            if not step > 0:
                raise ValueError
        except ValueError:
            self.notify("the step is a number above 0", severity="error")
            return
        self.grid_model.step = step
        self.app.config.nudge_step = step
        self.app.save_config()
        self._refresh_status()

    # -- merge insight: the metric overlay and suggestions -------------------------------------

    @on(LayerGrid.InsightRequested)
    def grid_insight(self, event: LayerGrid.InsightRequested) -> None:
        {
            "toggle": self.action_toggle_overlay,
            "pick": self.action_pick_metric,
            "suggest": self.action_suggest,
        }[event.kind]()

    def action_toggle_overlay(self) -> None:
        if self._insight_running is not None:
            self.action_cancel_insight()
            return
        if self.overlay_on:
            self.overlay_on = False
            self._refresh_grid()
            self._show_insight_note()
            return
        self._turn_overlay_on()

    def action_pick_metric(self) -> None:
        output = self._output_folder()
        self.app.push_screen(
            MetricPicker(
                (self.overlay_metric, self.overlay_source),
                str(output) if output is not None else None,
            ),
            self._metric_picked,
        )

    def _metric_picked(self, choice: tuple[str, str] | None) -> None:
        self.query_one(LayerGrid).focus()
        if choice is None:
            return
        self.overlay_metric, self.overlay_source = choice
        self._turn_overlay_on()

    def _turn_overlay_on(self) -> None:
        try:
            self._insight_request(self.overlay_source)
        except UserError as exc:
            self.notify(str(exc), title="No metrics", severity="warning", timeout=6)
            return
        self.overlay_on = True
        self._refresh_grid()

    def action_cancel_insight(self) -> None:
        """Stop a running analysis; nothing is cached from it."""
        if self._insight_cancel is not None:
            self._insight_cancel.set()
        self.overlay_on = False
        self._suggest_pending = False

    def _output_folder(self) -> Path | None:
        """The recipe's output folder (read from the recipe's folder, as the merge writes it), when
        a merged model is there."""
        from mergetui.recipe.paths import output_folder

        folder = output_folder(self.recipe, self._base_dir())
        if folder is None:
            return None
        has_weights = folder.is_dir() and (
            any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()
        )
        return folder if has_weights else None

    def _insight_request(self, source: str) -> tuple[tuple, dict[str, Path], str | None]:
        """(key, models, base) of the analysis the overlay needs; UserError when impossible."""
        models: dict[str, Path] = {}
        for name in self.recipe.models:
            facts = self.facts.get(name)
            if facts is None:
                raise UserError("the checkpoints' headers are still being read", fix="try again")
            if facts.path is None:
                raise UserError(
                    f"model {name!r} is not on this machine: {facts.error or 'not found'}",
                    fix="download it first; metrics read the weights",
                )
            models[name] = facts.path
        if len(models) < 2:
            raise UserError("metrics compare two or more models", fix="add models on the Setup tab")
        base = self.recipe.base if self.recipe.base in models else None
        if source == OUTPUT_SOURCE:
            output = self._output_folder()
            if output is None:
                raise UserError(
                    "no merged model in the output folder yet",
                    where=self.recipe.output or "output",
                    fix="run the merge first, or pick the parents' metrics (O)",
                )
            name = OUTPUT_SOURCE
            while name in models:
                name += "_"
            models = {**models, name: output}
            base = name
        key = (source, tuple((n, str(p)) for n, p in models.items()), base)
        return key, models, base

    def _sync_overlay(self) -> None:
        """Give the grid the analysis the overlay should show, starting it when it is missing."""
        model = self.grid_model
        if not self.overlay_on:
            model.insight, model.metric = None, None
            return
        try:
            key, models, base = self._insight_request(self.overlay_source)
        except UserError:
            model.insight, model.metric = None, None
            if self._insight_running is None:
                self._show_insight_note()
            return
        known = self.insights.get(self.overlay_source)
        if known is not None and known[0] == key:
            if model.insight is not known[1] or model.metric != self.overlay_metric:
                model.insight, model.metric = known[1], self.overlay_metric
                model._groups = {}
            self._show_insight_note()
            return
        model.insight, model.metric = None, None
        if self._insight_running != key:
            self._start_insight(key, models, base)

    def _start_insight(self, key: tuple, models: dict[str, Path], base: str | None) -> None:
        if self._insight_cancel is not None:
            self._insight_cancel.set()
        cancel = threading.Event()
        self._insight_cancel = cancel
        self._insight_running = key
        self._insight_percent = -1
        self._show_insight_note("computing metrics… (o cancels)")
        self._compute_insight(key, models, base, cancel)

    @work(thread=True, exclusive=True, group="insight", exit_on_error=False)
    def _compute_insight(
        self, key: tuple, models: dict[str, Path], base: str | None, cancel: threading.Event
    ) -> None:
        """Read every tensor once (or take the cached result), off the UI thread."""
        from mergetui.merge.analysis_run import analyze

        def progress(event) -> None:
            percent = int(event.fraction * 100)
            if percent != self._insight_percent:
                self._insight_percent = percent
                self._reply(self._insight_progress, key, percent, event.tensor)

        try:
            result = analyze(models, base, device="auto", cancel=cancel, on_progress=progress)
        except CancelledError:
            self._reply(self._insight_stopped, key, None)
            return
        except UserError as exc:
            self._reply(self._insight_stopped, key, str(exc))
            return
        except Exception as exc:  # a checkpoint that cannot be read is reported, not a crash
            self._reply(self._insight_stopped, key, f"computing the metrics failed: {exc}")
            return
        self._reply(self._insight_ready, key, result)

    def _insight_progress(self, key: tuple, percent: int, tensor: str) -> None:
        if self.is_mounted and self._insight_running == key:
            self._show_insight_note(f"computing metrics {percent}% · {tensor} · o cancels")

    def _insight_stopped(self, key: tuple, error: str | None) -> None:
        if not self.is_mounted or self._insight_running != key:
            return
        self._insight_running = None
        self._suggest_pending = False
        self.overlay_on = False
        if error:
            self.notify(error, title="No metrics", severity="error", timeout=8)
        else:
            self.notify("metrics cancelled", timeout=2)
        self._show_insight_note()
        self._refresh_grid()

    def _insight_ready(self, key: tuple, result: Analysis) -> None:
        if not self.is_mounted:
            return
        if self._insight_running == key:
            self._insight_running = None
        self.insights[key[0]] = (key, result)
        self._refresh_grid()
        self._show_insight_note()
        if self._suggest_pending and key[0] == PARENTS_SOURCE:
            self._suggest_pending = False
            self._open_suggestion(result)

    def _show_insight_note(self, text: str | None = None) -> None:
        note = self.query_one("#insight-note", Static)
        model = self.grid_model
        if text is None and model.overlay and model.insight is not None:
            insight = model.insight
            how = "merge output" if self.overlay_source == OUTPUT_SOURCE else "reference"
            text = (
                f"[b]{METRIC_TITLES[self.overlay_metric]}[/] vs [b]{insight.reference}[/] ({how}) "
                "· hot = differ · [b]O[/] metric · [b]S[/] suggest · [b]o[/] hide"
            )
            if self.overlay_metric == "agreement" and not insight.has_agreement:
                text = "agreement needs two task vectors (a base and two more models) · O metric"
        note.update(text or "")
        note.display = bool(text)

    def action_suggest(self) -> None:
        try:
            key, models, base = self._insight_request(PARENTS_SOURCE)
        except UserError as exc:
            self.notify(str(exc), title="No suggestion", severity="warning", timeout=6)
            return
        known = self.insights.get(PARENTS_SOURCE)
        if known is not None and known[0] == key:
            self._open_suggestion(known[1])
            return
        self._suggest_pending = True
        if self._insight_running != key:
            self._start_insight(key, models, base)
        self.notify("computing the metrics first…", timeout=3)

    def _open_suggestion(self, insight: Analysis) -> None:
        try:
            suggestion = self.grid_model.suggest(insight, SUGGEST_STRENGTH)
        except GridError as exc:
            self.notify(str(exc), title="No suggestion", severity="warning", timeout=6)
            return
        if suggestion.empty:
            self.notify(
                "nothing to suggest: every layer agrees as much as the others, or the values "
                "already sit at their goals",
                timeout=5,
            )
            return
        self.app.push_screen(
            SuggestPreview(self.grid_model, insight, suggestion), self._suggestion_answered
        )

    def _suggestion_answered(self, suggestion: Suggestion | None) -> None:
        grid = self.query_one(LayerGrid)
        grid.focus()
        if suggestion is None:
            self.notify("suggestion dismissed: nothing changed", timeout=2)
            return
        grid.run_operation("suggest", self.grid_model.apply_suggestion, suggestion)

    # -- slices --------------------------------------------------------------------------------

    def _selected_slice(self) -> tuple[int, int] | None:
        table = self.query_one("#slices-table", DataTable)
        if self.recipe.slices is None or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        index, position = (int(part) for part in str(key).split(":"))
        return index, position

    def _layer_counts(self) -> dict[str, int]:
        return {n: f.num_layers for n, f in self.facts.items() if f.num_layers}

    def action_add_slice(self) -> None:
        if not self.recipe.models:
            self.notify("add models first (Setup tab)", severity="warning")
            return
        models = list(self.recipe.models)
        counts = self._layer_counts()
        first = models[0]
        initial = SliceChoice(first, 0, counts.get(first, 1))
        self.app.push_screen(
            SliceDialog("Add a slice", models, initial, counts),
            partial(self._slice_saved, None, False),
        )

    def action_add_source(self) -> None:
        selected = self._selected_slice()
        if selected is None:
            self.notify("add a slice first (a)", severity="warning")
            return
        slice_ = self.recipe.slices[selected[0]]
        start, end = slice_.sources[0].layer_range
        models = list(self.recipe.models)
        self.app.push_screen(
            SliceDialog(
                f"Add a source to slice {selected[0] + 1}",
                models,
                SliceChoice(models[0], start, end),
                self._layer_counts(),
            ),
            partial(self._slice_saved, (selected[0], None), False),
        )

    def action_edit_slice(self) -> None:
        selected = self._selected_slice()
        if selected is None:
            return
        source = self.recipe.slices[selected[0]].sources[selected[1]]
        initial = SliceChoice(source.model, *source.layer_range)
        self.app.push_screen(
            SliceDialog(
                f"Slice {selected[0] + 1}", list(self.recipe.models), initial, self._layer_counts()
            ),
            partial(self._slice_saved, selected, True),
        )

    def _slice_saved(
        self, where: tuple[int, int | None] | None, replace: bool, choice: SliceChoice | None
    ) -> None:
        if choice is None:
            return
        layer_range = (choice.start, choice.end)
        with self.edit("edit slices"):
            if self.recipe.slices is None:
                self.recipe.slices = []
            if where is None:
                self.recipe.slices.append(Slice(sources=[SliceSource(choice.model, layer_range)]))
            elif replace:
                old = self.recipe.slices[where[0]].sources[where[1]]
                self.recipe.slices[where[0]].sources[where[1]] = SliceSource(
                    choice.model, layer_range, old.parameters
                )
            else:
                self.recipe.slices[where[0]].sources.append(SliceSource(choice.model, layer_range))
        self.recipe_changed()

    @on(DataTable.RowSelected, "#slices-table")
    def slice_row_chosen(self) -> None:
        self.action_edit_slice()

    def action_remove_slice(self) -> None:
        selected = self._selected_slice()
        if selected is None:
            return
        index, position = selected
        with self.edit("remove slice source"):
            sources = self.recipe.slices[index].sources
            del sources[position]
            if not sources:
                del self.recipe.slices[index]
            if not self.recipe.slices:
                self.recipe.slices = None
        self.recipe_changed()

    def action_move_slice(self, direction: int) -> None:
        selected = self._selected_slice()
        if selected is None:
            return
        index = selected[0]
        target = index + direction
        slices = self.recipe.slices
        if not 0 <= target < len(slices):
            return
        with self.edit("move slice"):
            slices[index], slices[target] = slices[target], slices[index]
        self.recipe_changed()
        table = self.query_one("#slices-table", DataTable)
        row = sum(len(s.sources) for s in slices[:target])
        table.move_cursor(row=row)

    # -- help and palette ----------------------------------------------------------------------

    def help_sections(self) -> list[HelpSection]:
        app = self.app
        return [
            ("Recipe screen", binding_rows(app, self.BINDINGS)),
            (
                "Layers tab: the grid",
                [
                    ("0-9 .", "Type a number: sets the selection"),
                    *binding_rows(app, LayerGrid.BINDINGS),
                    ("mouse", "Click a cell to move there, shift+click to select"),
                ],
            ),
            ("Setup tab: models", binding_rows(app, SetupPane.BINDINGS)),
            ("Slices tab", binding_rows(app, SlicesPane.BINDINGS)),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        """Every action of this screen (tabs, models, slices, the grid's keys) for the palette."""
        entries = [
            ("Recipe: Setup tab", "f6 · method, models, shared parameters, output", "tab('setup')"),
            ("Recipe: Layers tab", "f7 · the per-layer grid", "tab('layers')"),
            ("Recipe: Slices tab", "f8 · layer stacks for passthrough merges", "tab('slices')"),
            ("Recipe: Problems tab", "f9 · what the validator found", "tab('problems')"),
            ("Undo", "ctrl+z · undo the last recipe edit", "undo"),
            ("Redo", "ctrl+y · redo what was undone", "redo"),
            ("Change method…", "pick the merge method", "pick_method"),
            ("Add model…", "a (models list) · a checkpoint by path or Hub id", "add_model"),
            ("Remove model", "x (models list) · the model under the cursor", "remove_model"),
            ("Mark base model", "b (models list) · or unmark it", "toggle_base"),
            (
                "Move model up",
                "shift+up (models list) · earlier in the input order",
                "move_model(-1)",
            ),
            (
                "Move model down",
                "shift+down (models list) · later in the input order",
                "move_model(1)",
            ),
            ("Add slice…", "a (slices list) · append a slice to the layer stack", "add_slice"),
            (
                "Add source to slice…",
                "s (slices list) · another model feeding the slice",
                "add_source",
            ),
            ("Edit slice source…", "e (slices list) · model and layer range", "edit_slice"),
            (
                "Remove slice source",
                "x (slices list) · and its slice if it was the last",
                "remove_slice",
            ),
            ("Move slice up", "shift+up (slices list) · earlier in the stack", "move_slice(-1)"),
            ("Move slice down", "shift+down (slices list) · later in the stack", "move_slice(1)"),
            ("Set layer count…", "when the checkpoints cannot be read", "set_layer_count"),
            ("Set nudge step…", "how much + and - change a cell", "set_step"),
            ("Cancel metrics", "stop computing the grid's metric overlay", "cancel_insight"),
        ]
        commands = [
            PaletteCommand(title, help_text, partial(self.run_action, action), action)
            for title, help_text, action in entries
        ]
        for item in GRID_ACTIONS:
            commands.append(
                PaletteCommand(
                    f"Grid: {item.description}",
                    f"{item.key.split(',')[0]} (Layers tab)",
                    partial(self._grid_action, item.action),
                    item.action,
                )
            )
        return commands

    def _grid_action(self, action: str) -> None:
        self.action_tab("layers")
        self.call_later(self.query_one(LayerGrid).run_action, action)


def read_checkpoint_facts(source: str, revision: str | None, base_dir: Path) -> CheckpointFacts:
    """Headers only: layer count, tensor names and parameter counts, or why they are unknown."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.locate import find_local
    from mergetui.recipe.paths import local_model_path

    try:
        candidate = local_model_path(source, base_dir)
        path = candidate if candidate.exists() else find_local(source, revision)
        if path is None:
            return CheckpointFacts(error=f"{source}: not found locally (not downloaded yet?)")
        checkpoint = open_checkpoint(path)
        layer_parameters = None
        if checkpoint.layers:
            layer_parameters = sum(checkpoint.tensors[n].numel for n in checkpoint.layer_tensors(0))
        return CheckpointFacts(
            path=path,
            num_layers=checkpoint.num_layers,
            parameters=checkpoint.parameter_count,
            layer_parameters=layer_parameters,
            names=list(checkpoint.tensors),
        )
    except UserError as exc:
        return CheckpointFacts(error=str(exc))
    except (OSError, ValueError) as exc:
        return CheckpointFacts(error=f"{source}: {exc}")
