"""What the Checkpoints screen's panes tell the screen (small dataclasses, as Textual's own)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class DetailsRead(Message):
    """A row's details were read; a Hub row's parameters, layers and size came with them."""

    key: str


@dataclass
class HubAnswered(Message):
    """The Hub search changed its message; with `found`, its rows too (the list changes)."""

    found: bool
