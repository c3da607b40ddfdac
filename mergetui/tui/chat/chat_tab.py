"""The Chat tab (F6): talk to the loaded model, its replies streamed as Markdown.

The tokenizer's chat template shapes the conversation (or a plain prompt); escape stops a reply,
ctrl+n starts a new conversation. The reply is generated in a thread worker and arrives as
`ReplyText` messages, coalesced to at most one per STREAM_INTERVAL (`stream.py`).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Input, Markdown, Static

from mergetui.errors import UserError
from mergetui.tui.chat import stream
from mergetui.tui.chat.messages import ReplyDone, ReplyText
from mergetui.tui.chat.tab import SessionTab, show_reply


class ChatInput(Input):
    """The message box: enter sends."""


class ChatTab(SessionTab):
    """The conversation with the loaded model."""

    def __init__(self) -> None:
        super().__init__("Chat [dim]F6[/]", id="chat")
        self.messages: list[Any] = []  # mergetui.chat.prompt.Message, the conversation
        self.reply_count = 0
        self.last_reply: Any = None
        self.reply_updates = 0  # ReplyText messages shown (the streaming test counts them)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="chat-log"):
            yield Static(
                "Load a model with [b]ctrl+l[/] (the merge just made, one of the "
                "recipe's models, or any checkpoint folder), then type below.",
                id="chat-empty",
                classes="hint",
            )
        yield ChatInput(
            placeholder="message · enter sends · esc stops a reply · ctrl+n new chat",
            id="chat-input",
            compact=True,
        )

    def greet(self, loaded: Any) -> None:
        """A model is loaded: the empty conversation says who it talks to."""
        for empty in self.query("#chat-empty"):
            if isinstance(empty, Static):
                empty.update(
                    f"Talking to [b]{escape(loaded.name)}[/]: type below, enter sends. "
                    "F7 compares it with the recipe's models, F8 checks perplexity."
                )

    def clear(self) -> None:
        """Forget the conversation (ctrl+n)."""
        self.messages.clear()
        log = self.query_one("#chat-log", VerticalScroll)
        log.remove_children()
        log.mount(Static("New conversation.", id="chat-empty", classes="hint"))

    @on(Input.Submitted, "#chat-input")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        chat = self.chat
        if not text:
            return
        if chat.loaded is None:
            if chat.model_loading:  # the message stays in the field: enter again once loaded
                self.notify("the model is still loading: send it once it is loaded")
            else:
                self.notify("load a model first (ctrl+l)", severity="warning")
            return
        if not chat.can_start():
            return
        from mergetui.chat.prompt import Message as ChatMessage
        from mergetui.chat.prompt import conversation

        event.input.value = ""
        target = self._show_turn(text, chat.loaded.name)
        messages = conversation(self.messages, text, chat.settings.system_prompt)
        self.messages.append(ChatMessage("user", text))
        stop = chat.begin("reply", "[b]generating[/]… esc stops")
        self._reply(chat.loaded, messages, chat.settings_copy(), target, stop)

    def _show_turn(self, text: str, name: str) -> str:
        """Show what was said and an empty reply; the id of the reply's view."""
        log = self.query_one("#chat-log", VerticalScroll)
        for empty in self.query("#chat-empty"):
            empty.remove()
        self.reply_count += 1
        target = f"reply-{self.reply_count}"
        log.mount(Static(f"[b]you[/] {escape(text)}", classes="user-msg"))
        log.mount(Static(f"[b]{escape(name)}[/]", classes="reply-name"))
        log.mount(Markdown("…", id=target, classes="reply"))
        log.scroll_end(animate=False)
        return target

    @work(thread=True, exclusive=True, group="chat-reply", exit_on_error=False)
    def _reply(
        self, loaded: Any, messages: list[Any], settings: Any, target: str, stop: Any
    ) -> None:
        from mergetui.chat.generate import generate_reply

        relay = stream.Coalescer(self, target)
        try:
            reply = generate_reply(loaded, messages, settings, on_text=relay, stop=stop)
        except UserError as exc:
            relay.flush()
            self.post_message(ReplyDone(target, None, str(exc)))
            return
        except Exception as exc:
            relay.flush()
            self.post_message(ReplyDone(target, None, f"generation failed: {exc!r}"))
            return
        relay.text = reply.text
        relay.flush()
        self.post_message(ReplyDone(target, reply))

    @on(ReplyText)
    def reply_text(self, event: ReplyText) -> None:
        self.reply_updates += show_reply(self, event)
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    @on(ReplyDone)
    def reply_done(self, event: ReplyDone) -> None:
        from mergetui.chat.prompt import Message as ChatMessage

        chat = self.chat
        chat.busy = None
        if event.reply is None:
            chat.status(f"[b $error]✗[/] {escape(event.error)}")
            self.notify(event.error, title="No reply", severity="error")
            if self.messages and self.messages[-1].role == "user":
                self.messages.pop()
            return
        reply = event.reply
        self.last_reply = reply
        self.messages.append(ChatMessage("assistant", reply.text))
        dtype = f", {chat.loaded.dtype}" if chat.loaded is not None else ""
        chat.status(
            f"{reply.tokens} tokens in {reply.seconds:.1f} s "
            f"({reply.tokens_per_second:.1f} tokens/s{dtype})",
            stream.FINISH_NOTES.get(reply.finish, ""),
        )
        for view in self.query(f"#{event.target}"):
            if isinstance(view, Markdown) and not reply.text:
                view.update("*(no visible text)*")
