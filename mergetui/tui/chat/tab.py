"""What every tab of the Chat screen shares: the way to its session, and the view of a reply."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode
from textual.widgets import Markdown, TabPane

from mergetui.tui.chat.messages import ReplyText

if TYPE_CHECKING:
    from mergetui.tui.chat.screen import ChatScreen


class SessionTab(TabPane):
    """A tab of the Chat screen; the screen holds the session the tabs share (the loaded model,
    its permissions, the settings, and the one job that may run)."""

    @property
    def chat(self) -> ChatScreen:
        return cast("ChatScreen", self.screen)


def show_reply(node: DOMNode, event: ReplyText) -> int:
    """Put the reply so far into its Markdown view (under `node`); how many views showed it."""
    shown = 0
    for view in node.query(f"#{event.target}"):
        if isinstance(view, Markdown):
            view.update(event.text or "…")
            shown += 1
    return shown
