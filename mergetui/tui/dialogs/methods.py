"""Pick the merge method: every method with its one-line description, its parameters below."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from mergetui.recipe.methods import METHODS, REQUIRED, MethodSpec
from mergetui.tui.dialogs.base import DialogScreen


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
        self.title_text = "Merge method"

    def compose_body(self) -> ComposeResult:
        yield OptionList(
            *(
                Option(
                    Text(f"{spec.name:<17} {spec.description}", no_wrap=True, overflow="ellipsis"),
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
