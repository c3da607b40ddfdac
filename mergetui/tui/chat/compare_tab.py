"""The Compare tab (F7): one prompt to the loaded model and the recipe's models, side by side.

The models answer one after another in a thread worker; they stay loaded for the next prompt when
they all fit in memory, else each is loaded for its turn and freed after it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Markdown, Static

from mergetui.errors import UserError
from mergetui.tui.chat import stream
from mergetui.tui.chat.messages import CompareStatus, ReplyText, WorkEnded
from mergetui.tui.chat.tab import SessionTab, show_reply


def _not_loaded(exc: Exception) -> str:
    """Why a model did not load: a UserError says it in words, anything else as it is."""
    return str(exc) if isinstance(exc, UserError) else repr(exc)


class CompareTab(SessionTab):
    """A column per model: its name, its status and its reply."""

    def __init__(self) -> None:
        super().__init__("Compare [dim]F7[/]", id="compare")

    def compose(self) -> ComposeResult:
        yield Static(id="compare-models", classes="hint")
        yield Input(
            placeholder="a prompt for every model · enter sends · esc stops",
            id="compare-input",
            compact=True,
        )
        yield Horizontal(id="compare-columns")

    def show_sources(self, sources: list[tuple[str, str]]) -> None:
        """Name the models a prompt will go to."""
        names = (
            ", ".join(name for name, _ in sources) or "none yet (load a model, or open a recipe)"
        )
        self.query_one("#compare-models", Static).update(
            f"models: {escape(names)} · loaded one after another if memory is short"
        )

    @on(Input.Submitted, "#compare-input")
    def compare(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        chat = self.chat
        if not prompt or not chat.can_start():
            return
        chat.refresh_sources()
        if not chat.compare_sources:
            self.notify("no models to compare: load one or open a recipe", severity="warning")
            return
        columns = self.query_one("#compare-columns", Horizontal)
        columns.remove_children()
        for index, (name, _path) in enumerate(chat.compare_sources):
            column = Vertical(
                Static(f"[b]{escape(name)}[/]", classes="compare-title"),
                Static("waiting", id=f"compare-status-{index}", classes="hint"),
                VerticalScroll(Markdown("", id=f"compare-{index}"), classes="compare-body"),
                classes="compare-column",
            )
            columns.mount(column)
        stop = chat.begin("compare", "[b]comparing[/]… esc stops")
        self._compare(list(chat.compare_sources), prompt, chat.settings_copy(), stop)

    @work(thread=True, exclusive=True, group="chat-compare", exit_on_error=False)
    def _compare(
        self, sources: list[tuple[str, str]], prompt: str, settings: Any, stop: Any
    ) -> None:
        from mergetui.chat.prompt import conversation

        chat = self.chat
        keep = chat.keep_all(sources)
        if not keep:  # they take turns: free the parents kept until now
            for path in list(chat.extra):
                chat.extra.pop(path).unload()
        messages = conversation([], prompt, settings.system_prompt)
        turns = chat.models_in_turn(sources, keep, stop, self._post_status, describe=_not_loaded)
        for index, loaded in turns:
            self._answer(index, loaded, messages, settings, stop)
        self.post_message(WorkEnded("compare"))

    def _answer(self, index: int, loaded: Any, messages: Any, settings: Any, stop: Any) -> None:
        """One model's reply into its column (in the worker's thread)."""
        from mergetui.chat.generate import generate_reply

        status = partial(self._post_status, index)
        status("generating…")
        relay = stream.Coalescer(self, f"compare-{index}")
        try:
            reply = generate_reply(loaded, messages, settings, on_text=relay, stop=stop)
            relay.text = reply.text or "*(no visible text)*"
            relay.flush()
            why = stream.COMPARE_NOTES.get(reply.finish, reply.finish)
            status(f"{reply.tokens} tokens · {reply.tokens_per_second:.1f}/s · {why}")
        except Exception as exc:
            status(f"failed: {exc}")

    def _post_status(self, index: int, text: str) -> None:
        self.post_message(CompareStatus(index, text))

    @on(CompareStatus)
    def compare_status(self, event: CompareStatus) -> None:
        for view in self.query(f"#compare-status-{event.column}"):
            if isinstance(view, Static):
                view.update(escape(event.text))

    @on(ReplyText)
    def reply_text(self, event: ReplyText) -> None:
        show_reply(self, event)
