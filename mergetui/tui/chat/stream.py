"""A reply as it grows: at most one update per STREAM_INTERVAL, and the words for why it ended.

Read through this module (the tests patch STREAM_INTERVAL to see every update).
"""

from __future__ import annotations

import time

from textual.message_pump import MessagePump

from mergetui.tui.chat.messages import ReplyText

STREAM_INTERVAL = 0.05  # seconds between two updates of a growing reply
FINISH_NOTES = {
    "end": "end of turn",
    "length": "hit max new tokens",
    "context": "the model's context window is full",
    "stopped": "stopped",
}
# The same, short enough for a Compare column's status line.
COMPARE_NOTES = {
    "end": "end of turn",
    "length": "max tokens",
    "context": "context full",
    "stopped": "stopped",
}


class Coalescer:
    """Posts the latest reply text at most once per interval, and always the last one."""

    def __init__(self, target: MessagePump, view: str) -> None:
        self.target = target
        self.view = view  # the id of the Markdown view the text goes to
        self.interval = STREAM_INTERVAL
        self.last = 0.0
        self.text = ""
        self.posted = ""

    def __call__(self, text: str) -> None:
        self.text = text
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.flush()

    def flush(self) -> None:
        if self.text != self.posted:
            self.posted = self.text
            self.target.post_message(ReplyText(self.view, self.text))
