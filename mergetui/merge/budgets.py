"""The limits a merge's threads share, and the ledger that counts what they hold.

`Ledger` is the engine's own count of the memory it holds (its peak is `MergeResult.accounted_
peak_bytes`, bounded by `WorkModel.bound`); `ByteBudget` keeps the reader from holding more inputs
than the work model allows; `BufferPool` hands the big buffers of finished pieces to the next
ones; `ComputeGate` admits pieces to the compute workers in plan order while their memory fits.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from mergetui.merge.work import POOL_MIN_BYTES

if TYPE_CHECKING:
    import torch


class Ledger:
    """The engine's own count of the memory it holds, and its high-water mark (`peak`).

    It counts the inputs read and not yet released (the reader's budget), each compute worker's
    largest working set so far (its allocator arena keeps that much once freed), the results and
    chunks on their way to the writer, the pool's free buffers, and the raw bytes the reader holds
    while converting. The plan's peak estimate is the process baseline plus a bound on `peak`
    (`WorkModel.bound`); the tests hold it to that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = 0
        self._worker_high: dict[int, int] = {}
        self.peak = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._now += nbytes
            self.peak = max(self.peak, self._now)

    def working(self, worker: int, nbytes: int) -> None:
        """Worker `worker` starts a piece whose working set (besides its inputs) is `nbytes`."""
        with self._lock:
            grown = nbytes - self._worker_high.get(worker, 0)
            if grown > 0:
                self._worker_high[worker] = nbytes
                self._now += grown
                self.peak = max(self.peak, self._now)


class ByteBudget:
    """Admits a read when the bytes held stay under the limit (or nothing is held at all)."""

    def __init__(self, limit: int, ledger: Ledger | None = None) -> None:
        self._limit = limit
        self._held = 0
        self._closed = False
        self._cond = threading.Condition()
        self._ledger = ledger or Ledger()

    def acquire(self, nbytes: int) -> bool:
        with self._cond:
            while not self._closed and self._held > 0 and self._held + nbytes > self._limit:
                self._cond.wait()
            if self._closed:
                return False
            self._held += nbytes
        self._ledger.add(nbytes)
        return True

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._held -= nbytes
            self._cond.notify_all()
        self._ledger.add(-nbytes)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class BufferPool:
    """Reuses the big byte buffers of finished pieces for the next ones.

    Pieces of a streamed tensor all have the same size, so after the first few every read, float32
    conversion and output cast lands in memory that is already mapped: no page faults, and the
    allocator never accumulates freed blocks across threads. Small buffers are not pooled.
    """

    def __init__(self, limit: int, ledger: Ledger | None = None) -> None:
        self._free: dict[int, list[Any]] = {}
        self._bytes = 0
        self._limit = limit
        self._lock = threading.Lock()
        self._ledger = ledger or Ledger()

    def take(self, nbytes: int) -> torch.Tensor:
        import torch

        if nbytes >= POOL_MIN_BYTES:
            with self._lock:
                stack = self._free.get(nbytes)
                if stack:
                    self._bytes -= nbytes
                    self._ledger.add(-nbytes)
                    return stack.pop()
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buffer: torch.Tensor | None) -> None:
        if buffer is None or buffer.numel() < POOL_MIN_BYTES:
            return
        with self._lock:
            if self._bytes + buffer.numel() <= self._limit:
                self._free.setdefault(buffer.numel(), []).append(buffer)
                self._bytes += buffer.numel()
                self._ledger.add(buffer.numel())


class ComputeGate:
    """Admits pieces to the compute workers in plan order while their memory fits.

    A piece whose footprint is at most budget / workers is shared: up to `workers` of them run at
    once, each on one torch thread (their sum stays within the budget). A bigger one is exclusive:
    it starts once nothing else computes, nothing starts beside it, and it gets every core.
    """

    def __init__(self, budget: int, workers: int, cores: int) -> None:
        self._budget = budget
        self._workers = workers
        self._cores = cores
        self._next = 0
        self._active = 0
        self._exclusive = False
        self._closed = False
        self._cond = threading.Condition()

    def is_exclusive(self, footprint: int) -> bool:
        return self._workers == 1 or footprint * self._workers > self._budget

    def enter(self, number: int, footprint: int) -> int | None:
        """Wait for piece `number`'s turn and room; the torch threads it gets (None: closed)."""
        alone = self.is_exclusive(footprint)
        with self._cond:
            while not self._closed and not (number == self._next and self._has_room(alone)):
                self._cond.wait()
            if self._closed:
                return None
            self._next += 1
            self._active += 1
            self._exclusive = alone
            self._cond.notify_all()
        return self._cores if alone else max(1, self._cores // self._workers)

    def _has_room(self, alone: bool) -> bool:
        if self._active == 0:
            return True
        return not alone and not self._exclusive and self._active < self._workers

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._exclusive = False
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
