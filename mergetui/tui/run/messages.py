"""What the merge worker tells the Run screen, and what the Run screen asks of the app.

Small dataclasses, as Textual's own messages are; the worker posts them from its thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message


@dataclass
class ProgressState:
    """What the screen shows of a running merge; the worker sends copies of it."""

    bytes_done: int = 0
    total_bytes: int = 0
    tensors_done: int = 0
    tensor_count: int = 0
    current: str = ""
    layer_count: int = 0
    layers_done: set[int] = field(default_factory=set)
    active_layer: int | None = None
    pre_done: bool = False
    post_done: bool = False


@dataclass
class RunStarted(Message):
    """The plan is made: its summary lines, the first progress and the device it names."""

    summary: list[str]
    state: ProgressState
    device: str


@dataclass
class StageStarted(Message):
    """A multi-stage run reaches a stage: `stage 2/3: NAME`, its folder, and whether it runs
    (False: up to date, skipped)."""

    heading: str
    output: Path | None
    runs: bool


@dataclass
class RunProgress(Message):
    """Tensors written since the last report (at most PROGRESS_HZ a second)."""

    state: ProgressState


@dataclass
class RunLog(Message):
    """A line for the Log tab, in a rich style."""

    text: str
    style: str = ""


@dataclass
class RunDevice(Message):
    """The device the engine chose (the plan may say `auto`)."""

    device: str


@dataclass
class RunEnded(Message):
    """The run is over: finished, failed or cancelled, with its history record."""

    outcome: str
    message: str
    output_dir: Path | None
    record: Any


@dataclass
class ChatWith(Message):
    """Asks the app to open the Chat screen on `source` (a finished merge): the Run screen reaches
    the Chat screen through the app, never by importing it."""

    source: str
