"""What the Chat screen's workers tell the screen and its tabs.

Small dataclasses, as Textual's own messages are; the workers post them from their threads. A
reply's text is sent whole each time (not a delta), so a dropped update loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from mergetui.tui.chat.sources import LoadChoice


@dataclass
class LoadProgress(Message):
    """A loading step (reading the config, loading the weights…) and how far the load is."""

    stage: str
    fraction: float


@dataclass
class ModelLoaded(Message):
    """The model is loaded (a `mergetui.chat.loader.LoadedModel`), as chosen."""

    loaded: Any
    choice: LoadChoice


@dataclass
class LoadFailed(Message):
    source: str
    error: str


@dataclass
class ReplyText(Message):
    """The reply so far in the Markdown view `target` (the whole text, not a delta)."""

    target: str
    text: str


@dataclass
class ReplyDone(Message):
    """The Chat tab's reply ended: `reply` (a `GeneratedReply`), or None and the error."""

    target: str
    reply: Any
    error: str = ""


@dataclass
class CompareStatus(Message):
    """The status line of the Compare tab's column `column`."""

    column: int
    text: str


@dataclass
class CheckRow(Message):
    """A Quick check row's status, and its result once scored."""

    row: int
    status: str
    result: Any = None


@dataclass
class WorkEnded(Message):
    """A compare or a check ended (stopped or done): the screen is free again."""

    kind: str
