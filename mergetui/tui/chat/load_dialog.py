"""The Chat screen's load dialog (ctrl+l): the merge just made, one of the recipe's models, a past
merge, or any folder typed (tab completes it); and whether the model may run its own code or read
pickled .bin weights."""

from __future__ import annotations

from rich.markup import escape
from textual import events, on
from textual.app import ComposeResult
from textual.widgets import Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from mergetui.tui.chat.sources import LoadChoice
from mergetui.tui.dialogs.base import DialogScreen
from mergetui.tui.dialogs.paths import PathInput
from mergetui.tui.paths_text import short_path


class LoadModelDialog(DialogScreen):
    """Pick the merge just made, one of the recipe's models, a past merge, or type any folder."""

    DEFAULT_CSS = """
    LoadModelDialog OptionList { height: auto; max-height: 10; }
    """
    title_text = "Load a model to chat with"

    def __init__(
        self,
        candidates: list[tuple[str, str]],
        trusted: set[str],
        bin_allowed: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.candidates = candidates
        self.trusted = trusted
        self.bin_allowed = bin_allowed or set()
        # True once a key typed in the list started a folder: keys typed quickly can still reach
        # the list before the field has focus, and they continue it.
        self.typing = False

    def compose_body(self) -> ComposeResult:
        if self.candidates:
            yield OptionList(
                *(
                    Option(f"{escape(label)}  [dim]{escape(short_path(path))}[/]", id=str(i))
                    for i, (label, path) in enumerate(self.candidates)
                ),
                id="candidates",
            )
        yield Label("or a checkpoint folder (or a downloaded Hub id)")
        yield PathInput(
            self.candidates[0][1] if self.candidates else "",
            placeholder="./merges/my-merge",
            id="source",
            select_on_focus=False,  # a character typed in the list lands here, kept
        )
        yield Checkbox(
            "trust remote code for this model (runs Python shipped with it)",
            False,
            id="trust",
            compact=True,
        )
        yield Checkbox(
            "allow pytorch_model.bin weights (a pickle: only files you trust)",
            False,
            id="allow-bin",
            compact=True,
        )
        yield Static(
            "enter loads · type (or tab) for a folder · escape cancels",
            classes="hint",
            id="message",
        )

    def on_mount(self) -> None:
        if self.candidates:
            self.query_one(OptionList).highlighted = 0
            self.query_one(OptionList).focus()
        else:
            self.query_one("#source", Input).focus()
        self._sync_trust()

    def on_key(self, event: events.Key) -> None:
        # Typing while the list has focus starts a folder: the keys would otherwise be lost and
        # enter would load the highlighted model instead of the one typed.
        if isinstance(self.focused, OptionList) and event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            field_ = self.query_one("#source", Input)
            if self.typing:
                field_.insert_text_at_cursor(event.character)
            else:
                field_.value = event.character
                field_.cursor_position = len(field_.value)
                self.typing = True
            field_.focus()
            self._sync_trust()

    def _sync_trust(self) -> None:
        source = self.query_one("#source", Input).value.strip()
        self.query_one("#trust", Checkbox).value = source in self.trusted
        self.query_one("#allow-bin", Checkbox).value = source in self.bin_allowed

    @on(OptionList.OptionHighlighted)
    def highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.typing = False  # a model chosen in the list: the next key typed starts afresh
        self.query_one("#source", Input).value = self.candidates[int(str(event.option.id))][1]
        self._sync_trust()

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self._answer(self.candidates[int(str(event.option.id))][1])

    @on(Input.Submitted, "#source")
    def submitted(self, event: Input.Submitted) -> None:
        self._answer(event.value.strip())

    def _answer(self, source: str) -> None:
        if not source:
            message = self.query_one("#message", Static)
            message.update("name a checkpoint folder")
            message.add_class("error")
            return
        self.dismiss(
            LoadChoice(
                source,
                self.query_one("#trust", Checkbox).value,
                self.query_one("#allow-bin", Checkbox).value,
            )
        )
