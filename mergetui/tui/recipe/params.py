"""The Setup tab's shared-parameter fields, and how their text reads and writes a parameter value."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Checkbox, Input, Label, Static

from mergetui.editing.cells import format_number
from mergetui.errors import UserError
from mergetui.recipe.methods import REQUIRED, ParamSpec
from mergetui.recipe.model import Conditional
from mergetui.tui.dialogs.methods import describe_param

NUMBER_FIX = "type a number like 0.5, or a gradient like [0, 0.5, 1]"


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


def parse_param_text(text: str, param: ParamSpec) -> Any:
    """What a person typed into a parameter field: a number, true/false, or a gradient list."""
    text = text.strip()
    if not text:
        return None
    if param.type == "bool":
        return _parse_bool(text, param)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{text!r} is not a number", where=param.name, fix=NUMBER_FIX) from None
    numbers = value if isinstance(value, list) else [value]
    if not numbers or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers
    ):
        raise UserError(
            f"{text!r} is not a number or a list of numbers", where=param.name, fix=NUMBER_FIX
        )
    if param.type == "int":
        if isinstance(value, list) or float(value) != int(value):
            raise UserError(f"{param.name} takes a whole number", where=param.name)
        return int(value)
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def _parse_bool(text: str, param: ParamSpec) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise UserError(f"{param.name} is true or false, not {text!r}", where=param.name)


def bool_label(value: bool) -> str:
    """Say the state in words: a checkbox's mark alone is easy to misread in 16 colours."""
    return "true" if value else "false"


def per_filter(value: Any) -> bool:
    """Whether a value is given per filter (the form cannot show it; the grid can)."""
    items = value if isinstance(value, list) else [value]
    return any(isinstance(v, Conditional) for v in items)


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
                disabled=per_filter(self.value),
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
            widget.disabled = per_filter(value)
