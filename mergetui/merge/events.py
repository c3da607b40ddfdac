"""What the engine tells its listeners while it runs: small frozen records, no behaviour.

The runner calls one `on_event(event)` callback from its own thread; the CLI turns the events into a
Rich progress bar, the app into Textual messages. Nothing here imports torch, so listeners stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlanReady:
    """The merge is about to start: what it will produce."""

    method: str
    models: tuple[str, ...]
    tensor_count: int
    layer_count: int | None
    total_bytes: int
    shard_count: int
    output_dir: Path
    device: str
    estimated_peak_bytes: int


@dataclass(frozen=True)
class TensorDone:
    """One output tensor is computed and handed to the writer (index counts from 0)."""

    index: int
    tensor_count: int
    name: str
    bytes_written: int
    total_bytes: int
    layer: int | None


@dataclass(frozen=True)
class ShardWritten:
    """One output shard holds all its tensors (index counts from 0)."""

    index: int
    shard_count: int
    filename: str
    nbytes: int


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the merge (a missing tokenizer...)."""

    message: str


@dataclass(frozen=True)
class Finished:
    """The output folder is complete and in place."""

    output_dir: Path
    seconds: float
    tensor_count: int
    total_bytes: int


@dataclass(frozen=True)
class Failed:
    """The merge stopped on an error; nothing was left behind."""

    message: str


@dataclass(frozen=True)
class Cancelled:
    """The merge stopped because the cancel event was set; nothing was left behind."""

    tensors_done: int = 0


MergeEvent = PlanReady | TensorDone | ShardWritten | Notice | Finished | Failed | Cancelled
EventCallback = Callable[[MergeEvent], None]


@dataclass(frozen=True)
class MergeResult:
    """What `run_merge` returns once the output folder is in place."""

    output_dir: Path
    seconds: float
    tensor_count: int
    total_bytes: int
    shard_files: tuple[str, ...]
    device: str
    notices: tuple[str, ...] = ()
    # The engine's own count of the most memory it held (runner's `_Ledger`); the plan's
    # estimated_peak_bytes stays above it plus the process baseline.
    accounted_peak_bytes: int = 0
