"""Questions answered with a key or a button: unsaved changes before quitting, yes or no."""

from __future__ import annotations

from typing import Any, NamedTuple

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, Static

from mergetui.tui.dialogs.base import DialogScreen


class Choice(NamedTuple):
    """One button of a question, and the answer it gives."""

    label: str
    id: str
    answer: Any
    variant: str = "default"


class QuestionDialog(DialogScreen):
    """A text and a row of buttons; a button (or its key, bound to `answer`) answers."""

    def __init__(self, title: str, text: str, choices: list[Choice], focus: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = text
        self.choices = choices
        self.focus_id = focus

    def compose_body(self) -> ComposeResult:
        yield Static(self.body)
        with Horizontal(classes="buttons"):
            for choice in self.choices:
                yield Button(choice.label, id=choice.id, variant=choice.variant)

    def on_mount(self) -> None:
        self.query_one(f"#{self.focus_id}", Button).focus()

    def action_answer(self, answer: Any) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(next(c.answer for c in self.choices if c.id == event.button.id))


class ConfirmQuit(QuestionDialog):
    """Unsaved changes: save, discard or stay. Answers "save", "discard" or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Stay"),
        Binding("s", "answer('save')", "Save"),
        Binding("d", "answer('discard')", "Discard"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__(
            "Unsaved changes",
            f"{name} has changes that are not saved. Save them before quitting?",
            [
                Choice("Save (s)", "save", "save", "primary"),
                Choice("Discard (d)", "discard", "discard", "error"),
                Choice("Stay (esc)", "stay", None),
            ],
            focus="save",
        )
        self.document_name = name


class ConfirmDialog(QuestionDialog):
    """A yes/no question; answers True (y or enter on Yes) or False (n, escape)."""

    BINDINGS = [
        Binding("escape,n", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes"),
    ]

    def __init__(self, title: str, text: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(
            title,
            text,
            [
                Choice(f"{yes} (y)", "yes", True, "error"),
                Choice(f"{no} (n)", "no", False, "primary"),
            ],
            focus="no",
        )
        self.yes, self.no = yes, no
