"""The help screen (f1 or ?): the keys of the screen underneath, grouped by where they work.

Keys are read from the bindings themselves, so the help never drifts from what the keys do. A screen
can describe its parts with `help_sections()`; otherwise the active bindings are listed.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

HelpSection = tuple[str, list[tuple[str, str]]]


def binding_rows(app, bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    """(keys, text) for each binding with a description; keys sharing a text join."""
    rows: dict[str, tuple[list[str], str]] = {}
    for item in bindings:
        if not isinstance(item, Binding):
            continue
        if not item.description:
            continue
        keys = [
            app.get_key_display(Binding(key.strip(), item.action, key_display=item.key_display))
            for key in item.key.split(",")
        ]
        # The footer's short name, or the tooltip's longer sentence when the binding has one.
        text = item.tooltip or item.description
        shown, _ = rows.setdefault(text, ([], text))
        shown.extend(k for k in keys if k not in shown)
    return [(" ".join(keys), description) for keys, description in rows.values()]


def active_sections(screen: Screen) -> list[HelpSection]:
    """Fallback: the bindings active on `screen`, split into this screen's and the app's."""
    app = screen.app
    here: list[Binding] = []
    everywhere: list[Binding] = []
    for active in screen.active_bindings.values():
        (everywhere if active.node is app else here).append(active.binding)
    sections: list[HelpSection] = []
    if here:
        sections.append(
            (f"{screen.__class__.__name__.removesuffix('Screen')} screen", binding_rows(app, here))
        )
    sections.append(("Everywhere", binding_rows(app, everywhere)))
    return sections


class HelpScreen(ModalScreen):
    """Keys of the screen it was opened from; escape, q, f1 or ? close it."""

    BINDINGS = [
        Binding("escape,q,f1,question_mark", "dismiss", "Close help"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 90; max-width: 100%; height: 90%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen .help-title { text-style: bold; color: $text-accent; }
    HelpScreen .help-intro { color: $text-muted; margin-bottom: 1; }
    HelpScreen .help-section { text-style: bold; color: $text-primary; margin-top: 1; }
    HelpScreen .help-row { height: auto; }
    """

    def __init__(self, title: str, sections: list[HelpSection], intro: str = "") -> None:
        super().__init__()
        self.help_title = title
        self.sections = sections
        self.intro = intro

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Keys · {self.help_title}", classes="help-title")
            yield Static(
                (self.intro + "\n" if self.intro else "")
                + "ctrl+p opens the command palette: every action, searchable. escape closes this help.",
                classes="help-intro",
            )
            with VerticalScroll():
                for title, rows in self.sections:
                    yield Label(title, classes="help-section")
                    width = max((len(keys) for keys, _ in rows), default=4) + 2
                    lines = "\n".join(
                        f"{keys:<{width}} {description}" for keys, description in rows
                    )
                    yield Static(lines, classes="help-row", markup=False)

    async def action_dismiss(self, result: object = None) -> None:
        self.dismiss(result)
