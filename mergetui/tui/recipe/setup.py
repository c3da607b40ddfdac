"""The Setup tab: the merge method, the models (with their base), shared parameters and the output.

Its model keys work wherever the focus is in the tab, not only in the models list.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select, Static

from mergetui.dtypes import OUTPUT_NAMES
from mergetui.errors import UserError
from mergetui.recipe.methods import METHODS, ParamSpec
from mergetui.recipe.model import ModelEntry
from mergetui.tui.commands import PaletteEntry
from mergetui.tui.dialogs.methods import MethodPicker
from mergetui.tui.dialogs.models import AddModelDialog, ModelChoice
from mergetui.tui.recipe.base import RecipePane, move_bindings, swap
from mergetui.tui.recipe.params import ParamField, bool_label, parse_param_text, value_text

BASE_POLICY = {"required": "needs a base", "optional": "base optional", "ignored": "no base"}


class SetupPane(RecipePane):
    """The Setup tab (F6): method, models, shared parameters, output."""

    BINDINGS = [
        Binding("a", "add_model", "Add model", show=False),
        Binding("x,delete", "remove_model", "Remove model", show=False),
        Binding("b", "toggle_base", "Mark/unmark base", show=False),
        *move_bindings("move_model", "model"),
    ]
    PALETTE = (
        PaletteEntry("pick_method", "Change method…", "pick the merge method"),
        PaletteEntry("add_model", "Add model…", "a checkpoint by path or Hub id"),
        PaletteEntry("remove_model", "Remove model", "the model under the cursor"),
        PaletteEntry("toggle_base", "Mark base model", "or unmark it"),
        PaletteEntry("move_model(-1)", "Move model up", "earlier in the input order"),
        PaletteEntry("move_model(1)", "Move model down", "later in the input order"),
    )

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="setup-scroll"):
            yield Label("Method", classes="section")
            with Horizontal(id="method-row"):
                yield Button("method", id="method-button", compact=True)
                yield Static(id="method-summary")
            yield Static(id="method-params", classes="hint")
            yield Label(
                "Models  [dim]a add · x remove · b base · shift+↑↓ move[/]", classes="section"
            )
            yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
            yield Label("Shared parameters", classes="section")
            yield Vertical(id="params-form")
            yield Label("Output", classes="section")
            yield from self._output_fields()

    def _output_fields(self) -> ComposeResult:
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
                [(d, d) for d in OUTPUT_NAMES], prompt="model's own", id="dtype", compact=True
            )
        with Horizontal(classes="param-field"):
            yield Label("seed", classes="param-name")
            yield Input(
                placeholder="none", id="seed", type="integer", classes="param-input", compact=True
            )

    def on_mount(self) -> None:
        self.query_one("#models", DataTable).add_columns("base", "name", "source", "layers")

    # -- showing the recipe --------------------------------------------------------------------

    def show_recipe(self) -> None:
        """Refresh every part of the tab from the recipe (after an edit, undo, redo or open)."""
        self._show_method()
        self.show_models()
        self._show_params()
        self._show_output()

    def _show_method(self) -> None:
        spec = METHODS.get(self.recipe.method)
        self.query_one("#method-button", Button).label = f"{self.recipe.method} ▾"
        summary = self.query_one("#method-summary", Static)
        params = self.query_one("#method-params", Static)
        if spec is None:
            summary.update(f"[b]unknown method {self.recipe.method!r}[/]: press enter to pick one")
            params.update("")
            return
        summary.update(f"[b]{spec.pretty_name}[/] — {spec.description}")
        per_model = ", ".join(p.name for p in spec.per_model_params) or "none"
        shared = ", ".join(p.name for p in spec.shared_params) or "none"
        params.update(
            f"{BASE_POLICY[spec.base]} · per-model: {per_model} · shared: {shared}"
            + (f" · {spec.paper}" if spec.paper else "")
        )

    def show_models(self) -> None:
        """The models list, with each one's layer count once its headers are read."""
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
            base = "★" if name == self.recipe.base else ""
            table.add_row(base, name, entry.reference, layers, key=name)
        if self.recipe.models:
            table.move_cursor(row=min(keep, len(self.recipe.models) - 1))

    def _show_params(self) -> None:
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

    def _show_output(self) -> None:
        output = self.query_one("#output", Input)
        if not output.has_focus:
            output.value = self.recipe.output or ""
        seed = self.query_one("#seed", Input)
        if not seed.has_focus:
            seed.value = "" if self.recipe.seed is None else str(self.recipe.seed)
        dtype = self.query_one("#dtype", Select)
        wanted = self.recipe.dtype if self.recipe.dtype in OUTPUT_NAMES else Select.NULL
        if dtype.value != wanted:
            with dtype.prevent(Select.Changed):
                dtype.value = wanted

    # -- method and models ---------------------------------------------------------------------

    @on(Button.Pressed, "#method-button")
    def action_pick_method(self) -> None:
        self.app.push_screen(MethodPicker(self.recipe.method), self._method_picked)

    def _method_picked(self, name: str | None) -> None:
        if not name or name == self.recipe.method:
            return
        with self.edit(f"method {name}"):
            self.recipe.method = name

    def _selected_model(self) -> str | None:
        table = self.query_one("#models", DataTable)
        if not self.recipe.models or table.row_count == 0:
            return None
        return list(self.recipe.models)[min(table.cursor_row, len(self.recipe.models) - 1)]

    def _cursor_to(self, row: int) -> None:
        """Show the edited list at once and put its cursor on `row` (the screen's refresh keeps it)."""
        self.show_models()
        self.query_one("#models", DataTable).move_cursor(row=row)

    def action_add_model(self) -> None:
        self.app.push_screen(AddModelDialog(set(self.recipe.models)), self._model_added)

    def _model_added(self, choice: ModelChoice | None) -> None:
        if choice is None:
            return
        with self.edit(f"add model {choice.name}"):  # a folder's absolute path, or a Hub id
            self.recipe.models[choice.name] = ModelEntry(
                choice.name, choice.source, lora=choice.lora
            )
            spec = METHODS.get(self.recipe.method)
            if self.recipe.base is None and spec is not None and spec.base == "required":
                self.recipe.base = choice.name
        self._cursor_to(len(self.recipe.models) - 1)

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

    def action_toggle_base(self) -> None:
        name = self._selected_model()
        if name is None:
            return
        with self.edit(f"base {name}"):
            self.recipe.base = None if self.recipe.base == name else name

    def action_move_model(self, direction: int) -> None:
        name = self._selected_model()
        if name is None:
            return
        names = list(self.recipe.models)
        target = swap(names, names.index(name), direction)
        if target is None:
            return
        with self.edit(f"move model {name}"):
            self.recipe.models = {n: self.recipe.models[n] for n in names}
        self._cursor_to(target)

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

    @on(Input.Submitted, ".param-input")
    def param_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._field_done(event.input)

    @on(Input.Blurred, ".param-input")
    def param_blurred(self, event: Input.Blurred) -> None:
        self._field_done(event.input)

    def _field_done(self, widget: Input) -> None:
        """A field was submitted or left: write what it says into the recipe."""
        if widget.id == "output":
            self._set_output(widget.value.strip() or None)
        elif widget.id == "seed":
            self._set_seed(widget.value.strip())
        elif isinstance(field_ := widget.parent, ParamField) and not widget.disabled:
            try:
                value = parse_param_text(widget.value, field_.param)
            except UserError as exc:
                self.notify(str(exc), severity="error")
                return
            self._set_param(field_.param, value)

    @on(Checkbox.Changed)
    def switch_changed(self, event: Checkbox.Changed) -> None:
        field_ = event.checkbox.parent
        if isinstance(field_, ParamField):
            event.checkbox.label = bool_label(event.value)
            self._set_param(field_.param, event.value)

    def _set_output(self, value: str | None) -> None:
        if value != self.recipe.output:
            with self.edit("output"):
                self.recipe.output = value

    def _set_seed(self, text: str) -> None:
        try:
            seed = int(text) if text else None
        except ValueError:
            self.notify("the seed is a whole number", severity="error")
            return
        if seed != self.recipe.seed:
            with self.edit("seed"):
                self.recipe.seed = seed

    @on(Select.Changed, "#dtype")
    def dtype_changed(self, event: Select.Changed) -> None:
        value = None if event.value is Select.NULL else str(event.value)
        if value != self.recipe.dtype:
            with self.edit(f"dtype {value or 'default'}"):
                self.recipe.dtype = value
