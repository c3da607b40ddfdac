"""Executes a Plan: read, merge and write tensor by tensor, then put the folder in place.

Threads share the work so the disk and the arithmetic overlap, and every core computes:

- a reader thread reads the next tensor's inputs (pread, see reader.py) while the current one is
  being merged; a byte budget (the largest input set + up to 64 MB) lets it run ahead on small
  tensors but never holds two of the large sets at once;
- compute workers (one per core on the CPU, up to MAX_WORKERS; one on a GPU) cast the inputs to
  float32 on the device, run the method, cast the result once to the output dtype and hand it on.
  Pieces small enough to share the memory budget run side by side, one torch thread each; a piece
  too big to share (embeddings, lm_head) runs alone on every core (see `_ComputeGate`);
- a writer thread writes each finished tensor at its offset in its shard (see writer.py).

Everything is written to `.<name>.mergetui-tmp-PID-XXXX` beside the target (see target.py) and
renamed into place only when complete; on any error or cancel the temporary folder is removed and
nothing is left behind; one that a killed merge left is removed by the next merge into that target.
`run_merge` keeps no global state: several merges may run at once in one process.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes
from mergetui.merge.events import (
    Cancelled,
    EventCallback,
    Failed,
    Finished,
    MergeEvent,
    MergeResult,
    Notice,
    PlanReady,
    ShardWritten,
    TensorDone,
)
from mergetui.merge.methods._common import CHUNK_ELEMENTS, STREAMED
from mergetui.merge.plan import (
    CHUNKS_FROM_FILE_BYTES,
    PIECE_ELEMENTS,
    SHARED_WORKING_BYTES,
    chunk_working_bytes,
)
from mergetui.merge.target import (  # noqa: F401 - TEMP_MARKER, OLD_MARKER: public names here
    OLD_MARKER,
    TEMP_MARKER,
    TempFolder,
    check_output,
    output_guard,
    remove_stale_temps,
)

if TYPE_CHECKING:
    import torch

    from mergetui.merge.plan import Plan
    from mergetui.merge.plan_tensors import PlannedTensor

_POLL_SECONDS = 0.05
# How far past the largest input set the reader may prefetch.
PREFETCH_MARGIN_BYTES = 64 * 1024 * 1024
# On the CPU, up to this many pieces are merged at once, one per core. torch's intra-op threads
# gain little on chunk-sized operations (memory-bound, and every barrier waits for the slowest
# thread, which stalls whenever anything else wants the CPU), while pieces side by side scale.
MAX_WORKERS = 4


def run_merge(
    plan: Plan,
    *,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> MergeResult:
    """Run the merge; return once the output folder is complete and in place.

    Raises UserError (bad input, full disk...) or CancelledError after emitting Failed or
    Cancelled; in every such case no output folder and no temporary folder remain. `on_event` is
    called from the engine's threads, one call at a time.
    """
    emit = _SerialEmitter(on_event)
    started = time.perf_counter()
    target = plan.output_dir
    progress = _Progress()
    temp: TempFolder | None = None
    guard = output_guard(plan)
    try:
        check_output(target, force, **guard)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(target):
            emit(Notice(f"removed {stale.name}, left behind by an interrupted merge"))
        _check_free_space(target.parent, plan.total_bytes)
        temp = TempFolder(target)

        from mergetui.merge.device import resolve_device

        device = resolve_device(plan.device)
        emit(
            PlanReady(
                method=plan.method,
                models=tuple(plan.models),
                tensor_count=plan.tensor_count,
                layer_count=plan.layer_count,
                total_bytes=plan.total_bytes,
                shard_count=plan.shard_count,
                output_dir=target,
                device=str(device),
                estimated_peak_bytes=plan.estimated_peak_bytes,
            )
        )
        for message in plan.notices:
            emit(Notice(message))
        from mergetui.merge.output import prepare_extras, write_extras

        extras = prepare_extras(plan)  # recipe texts, tokenizer: fail before the long part
        _use_all_cores()
        _tune_allocator()
        ledger = _execute(plan, temp.path, device, emit, cancel, progress)
        notices = write_extras(plan, temp.path, extras)
        for message in notices:
            emit(Notice(message))
        _raise_if_cancelled(cancel)
        temp.release_into(target, force, **guard)
        temp = None
    except CancelledError:
        _remove(temp)
        emit(Cancelled(progress.tensors_done))
        raise
    except UserError as exc:
        _remove(temp)
        emit(Failed(str(exc)))
        raise
    except OSError as exc:
        _remove(temp)
        error = _os_user_error(exc, target)
        emit(Failed(str(error)))
        raise error from exc
    except BaseException as exc:
        _remove(temp)
        if isinstance(exc, KeyboardInterrupt):
            emit(Cancelled(progress.tensors_done))
        else:
            emit(Failed(f"internal error: {exc!r}"))
        raise
    seconds = time.perf_counter() - started
    emit(Finished(target, seconds, plan.tensor_count, plan.total_bytes))
    return MergeResult(
        output_dir=target,
        seconds=seconds,
        tensor_count=plan.tensor_count,
        total_bytes=plan.total_bytes,
        shard_files=tuple(plan.layout.filenames),
        device=str(device),
        notices=tuple(plan.notices) + tuple(notices),
        accounted_peak_bytes=ledger.peak,
    )


# ----------------------------------------------------------------------------------------------
# The threads: reader, compute workers, writer


class _Progress:
    def __init__(self) -> None:
        self.tensors_done = 0
        self.bytes_done = 0


class _SerialEmitter:
    """Calls the listener one event at a time, whichever engine thread emits."""

    def __init__(self, callback: EventCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()

    def __call__(self, event: MergeEvent) -> None:
        if self._callback is None:
            return
        with self._lock:
            self._callback(event)


class _ByteBudget:
    """Admits a read when the bytes held stay under the limit (or nothing is held at all)."""

    def __init__(self, limit: int, ledger: _Ledger | None = None) -> None:
        self._limit = limit
        self._held = 0
        self._closed = False
        self._cond = threading.Condition()
        self._ledger = ledger or _Ledger()

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


class _BufferPool:
    """Reuses the big byte buffers of finished pieces for the next ones.

    Pieces of a streamed tensor all have the same size, so after the first few every read, float32
    conversion and output cast lands in memory that is already mapped: no page faults, and the
    allocator never accumulates freed blocks across threads. Small buffers are not pooled.
    """

    MIN_BYTES = 1 << 20

    def __init__(self, limit: int, ledger: _Ledger | None = None) -> None:
        self._free: dict[int, list[Any]] = {}
        self._bytes = 0
        self._limit = limit
        self._lock = threading.Lock()
        self._ledger = ledger or _Ledger()

    def take(self, nbytes: int) -> torch.Tensor:
        import torch

        if nbytes >= self.MIN_BYTES:
            with self._lock:
                stack = self._free.get(nbytes)
                if stack:
                    self._bytes -= nbytes
                    self._ledger.add(-nbytes)
                    return stack.pop()
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buffer: torch.Tensor | None) -> None:
        if buffer is None or buffer.numel() < self.MIN_BYTES:
            return
        with self._lock:
            if self._bytes + buffer.numel() <= self._limit:
                self._free.setdefault(buffer.numel(), []).append(buffer)
                self._bytes += buffer.numel()
                self._ledger.add(buffer.numel())


class _Ledger:
    """The engine's own count of the memory it holds, and its high-water mark (`peak`).

    It counts the inputs read and not yet released (the reader's budget), each compute worker's
    largest working set so far (its allocator arena keeps that much once freed), the results and
    chunks on their way to the writer, the pool's free buffers, and the raw bytes the reader holds
    while converting. The plan's peak estimate is the process baseline plus a bound on `peak`
    (`_WorkModel.bound`); the tests hold it to that.
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


@dataclass(frozen=True)
class _Piece:
    """A run of elements [start, stop) of one output tensor: the unit the threads pass along.

    Element-wise methods stream big tensors in pieces of PIECE_ELEMENTS; every other tensor is one
    piece. Elements of a contiguous tensor are contiguous bytes, in the inputs and in the output.
    """

    tensor: PlannedTensor
    start: int
    stop: int
    fast_copy: bool  # passthrough without scale or dtype change: bytes in, bytes out

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.tensor.numel

    @property
    def last(self) -> bool:
        return self.stop == self.tensor.numel

    @property
    def numel(self) -> int:
        return self.stop - self.start


def _pieces(plan: Plan) -> list[_Piece]:
    return _split(plan.tensors, plan.method)


def _split(tensors: Sequence[PlannedTensor], method: str) -> list[_Piece]:
    from mergetui.recipe.methods import METHODS

    copies = METHODS[method].copies_input
    pieces = []
    for tensor in tensors:
        fast = (
            copies
            and not tensor.copy_only
            and tensor.per_model[0].get("scale") is None
            and tensor.inputs[0].dtype == tensor.dtype
        )
        total = tensor.numel
        if (tensor.elementwise or fast) and total > PIECE_ELEMENTS:
            for start in range(0, total, PIECE_ELEMENTS):
                pieces.append(_Piece(tensor, start, min(total, start + PIECE_ELEMENTS), fast))
        else:
            pieces.append(_Piece(tensor, 0, total, fast))
    return pieces


class _ComputeGate:
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


@dataclass
class _WorkModel:
    """How the engine runs a plan's pieces, and the memory limits that follow: `_execute` runs by
    it, and the plan's peak estimate is the process baseline plus its `bound()`."""

    pieces: list[_Piece]
    modes: list[str]
    early: list[bool]  # the reader converts the inputs to float32 (float64)
    sizes: list[int]  # bytes of inputs held
    footprints: list[int]  # bytes while computing (see `_footprint`)
    streams: bool  # the method hands its output to the writer chunk by chunk
    workers: int
    cores: int
    gate_budget: int
    reader_budget: int
    pool_limit: int
    queue_items: int

    def bound(self) -> int:
        """The most `_Ledger` can count in a run by this model: the reader's budget, each
        worker's largest working set, the pool (when a buffer is big enough to be pooled), the
        most bytes in flight to the writer, and the raw bytes the reader converts."""
        live = zip(self.pieces, self.modes, self.early, strict=True)
        working = max((f - s for f, s in zip(self.footprints, self.sizes, strict=True)), default=0)
        buffers, items, scratch = 0, [], 0
        in_flight = self.queue_items + 1 + self.workers  # queued, being written, being handed on
        for piece, mode, early in live:
            stored = max(s.nbytes * piece.numel // max(1, s.numel) for s in piece.tensor.inputs)
            out = piece.tensor.nbytes * piece.numel // max(1, piece.tensor.numel)
            if early:
                scratch = max(scratch, stored)
            if self.streams and mode != _WHOLE:
                row = piece.tensor.shape[-1] if piece.tensor.shape else 1
                chunk = min(piece.numel, max(CHUNK_ELEMENTS, row)) * out // max(1, piece.numel)
                items += [chunk] * min(in_flight, -(-out // max(1, chunk)))
            else:
                items.append(out)
            if mode != _FROM_FILE:
                buffers = max(buffers, stored, out, 8 * piece.numel if early else 0)
        pool = self.pool_limit if buffers >= _BufferPool.MIN_BYTES else 0
        flying = sum(sorted(items, reverse=True)[:in_flight])
        return (
            self.reader_budget
            + min(self.workers, len(self.pieces)) * working
            + pool
            + flying
            + scratch
        )


def _work_model(tensors: Sequence[PlannedTensor], method_name: str, device_type: str) -> _WorkModel:
    from mergetui.recipe.methods import METHODS

    spec = METHODS[method_name]
    pieces = _split(tensors, method_name)
    # A method whose spec says `reads_chunks` gets its whole-tensor inputs as chunk sources
    # (chunked.py): held as stored, or for the largest sets not held at all but read from the
    # file slice by slice. Otherwise, on the CPU, the reader thread converts inputs to float32
    # (off the compute threads); on a GPU the stored bytes travel and are converted there.
    chunked = spec.reads_chunks
    modes = [_input_mode(p, chunked) for p in pieces]
    # The largest tensors (read from the files slice by slice) go first: they take longest, and
    # one left for the end would run alone while the other workers have nothing left to do.
    order = sorted(range(len(pieces)), key=lambda i: modes[i] != _FROM_FILE)
    pieces, modes = [pieces[i] for i in order], [modes[i] for i in order]
    early = [
        device_type == "cpu" and mode == _WHOLE and not (p.tensor.copy_only or p.fast_copy)
        for p, mode in zip(pieces, modes, strict=True)
    ]
    sizes = [
        0 if mode == _FROM_FILE else _held_bytes(p, convert)
        for p, mode, convert in zip(pieces, modes, early, strict=True)
    ]
    # A method that streams its output (OutputChunks) hands it to the writer chunk by chunk.
    streams = chunked and spec.streams_output
    cache_elements = spec.cache_elements if chunked else 0
    footprints = [
        _footprint(p, size, mode, streams, cache_elements)
        for p, size, mode in zip(pieces, sizes, modes, strict=True)
    ]
    cores = _core_count()
    workers = min(cores, MAX_WORKERS) if device_type == "cpu" else 1
    # Pieces run side by side while their footprints add up to at most the largest one's, or
    # SHARED_WORKING_BYTES.
    gate_budget = max(max(footprints, default=0), SHARED_WORKING_BYTES)
    largest = max(sizes, default=0)
    shared = [n for n, f in zip(sizes, footprints, strict=True) if f * workers <= gate_budget]
    shared = shared if workers > 1 else []
    # Enough held for every worker's set, then a prefetch margin (streamed pieces always get
    # one more set in flight, read while the others compute).
    streamed = max((n for p, n in zip(pieces, sizes, strict=True) if not p.whole), default=0)
    held_limit = max(largest, workers * max(shared, default=0))
    return _WorkModel(
        pieces=pieces,
        modes=modes,
        early=early,
        sizes=sizes,
        footprints=footprints,
        streams=streams,
        workers=workers,
        cores=cores,
        gate_budget=gate_budget,
        reader_budget=held_limit + max(streamed, min(PREFETCH_MARGIN_BYTES, largest // 2)),
        pool_limit=min(max(2 * held_limit, 8 * 1024 * 1024), 512 * 1024 * 1024),
        queue_items=4 * workers,
    )


def working_bound(tensors: Sequence[PlannedTensor], method: str, device: str) -> int:
    """The most memory the engine holds for these tensors above the process baseline (no torch
    import): for `auto`, what it holds on the CPU, its largest case."""
    gpu = device.startswith(("cuda", "mps"))
    return _work_model(tensors, method, "cuda" if gpu else "cpu").bound()


def _execute(
    plan: Plan,
    folder: Path,
    device: torch.device,
    emit: Callable[[MergeEvent], None],
    cancel: threading.Event | None,
    progress: _Progress,
) -> _Ledger:
    """Run every piece through the reader, compute and writer threads; return the ledger of the
    memory the run held."""
    import torch

    from mergetui.merge.methods import get_method_function
    from mergetui.merge.reader import TensorReader
    from mergetui.merge.writer import ShardSetWriter

    method = get_method_function(plan.method)
    model = _work_model(plan.tensors, plan.method, device.type)
    pieces, modes, early, sizes = model.pieces, model.modes, model.early, model.sizes
    footprints, streams, workers = model.footprints, model.streams, model.workers
    ledger = _Ledger()
    reader = TensorReader()
    writer = ShardSetWriter(folder, plan.layout)
    gate = _ComputeGate(model.gate_budget, workers, model.cores)
    budget = _ByteBudget(model.reader_budget, ledger)
    pool = _BufferPool(model.pool_limit, ledger)
    stop = threading.Event()  # set on cancel and on any thread's error: every thread winds down
    loaded: queue.Queue[tuple[int, Any]] = queue.Queue()
    take_lock = threading.Lock()  # pieces leave `loaded` in plan order, one worker at a time
    # (tensor, first element, CPU tensor, pooled buffer or None): whole results, pieces, chunks.
    writes: queue.Queue[tuple[PlannedTensor, int, Any, Any] | None] = queue.Queue(
        maxsize=model.queue_items
    )
    errors: list[BaseException] = []  # the first is the one raised

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    def halted() -> bool:
        """Whether to stop now: a cancel (seen by any thread) or an error."""
        if cancel is not None and cancel.is_set():
            stop.set()
        return stop.is_set()

    def read_loop() -> None:
        with torch.inference_mode():
            for number, (piece, size, convert) in enumerate(zip(pieces, sizes, early, strict=True)):
                if stop.is_set() or not budget.acquire(size):
                    return
                try:
                    if modes[number] == _FROM_FILE:
                        data = _file_sources(reader, piece, device)
                    else:
                        data = _read_piece(reader, piece, convert, pool, ledger)
                except BaseException as exc:
                    fail(exc)
                    return
                loaded.put((number, data))
                del data

    taken = [0]

    def compute_loop(worker: int) -> None:
        while not halted():
            with take_lock:
                if taken[0] == len(pieces):
                    return
                item = _next_loaded(loaded, stop)
                if item is None:
                    return
                taken[0] += 1
            number, data = item
            piece = pieces[number]
            threads = gate.enter(number, footprints[number])
            if threads is None:
                return
            ledger.working(worker, footprints[number] - sizes[number])
            sink = None
            if streams and modes[number] != _WHOLE:

                def sink(start: int, chunk: torch.Tensor, piece: _Piece = piece) -> None:
                    if chunk.device.type != "cpu":
                        chunk = chunk.to("cpu")
                    item = (piece.tensor, piece.start + start, chunk, None)
                    ledger.add(chunk.numel() * chunk.element_size())
                    if halted() or not _put_write(writes, item, stop):
                        raise CancelledError("merge stopped")

            try:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)  # this thread's own OpenMP team size
                result = _compute(
                    plan, piece, data, method, device, stop, modes[number], pool, sink
                )
                if result is not None:  # on its way to the writer
                    ledger.add(result[0].numel() * result[0].element_size())
            except BaseException as exc:
                fail(exc)
                return
            finally:
                gate.leave()
                budget.release(sizes[number])
            del data
            if result is not None and not _put_write(
                writes, (piece.tensor, piece.start, *result), stop
            ):
                return
            del result

    def write_loop() -> None:
        total = plan.total_bytes
        while True:
            try:
                item = writes.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is None or halted():
                return
            tensor, start, result, buffer = item
            itemsize = tensor.nbytes // tensor.numel if tensor.numel else 0
            try:
                shard = writer.write(tensor.name, result, start * itemsize)
            except BaseException as exc:
                fail(exc)
                return
            progress.bytes_done += result.numel() * itemsize
            ledger.add(-result.numel() * result.element_size())
            del result, item
            pool.give(buffer)
            if not writer.is_written(tensor.name):
                continue
            progress.tensors_done += 1
            emit(
                TensorDone(
                    index=tensor.index,
                    tensor_count=plan.tensor_count,
                    name=tensor.name,
                    bytes_written=progress.bytes_done,
                    total_bytes=total,
                    layer=tensor.layer,
                )
            )
            if shard is not None:
                emit(ShardWritten(shard.index, plan.shard_count, shard.filename, shard.file_size))

    reader_thread = threading.Thread(target=read_loop, name="mergetui-reader", daemon=True)
    writer_thread = threading.Thread(target=write_loop, name="mergetui-writer", daemon=True)
    compute_threads = [
        threading.Thread(target=compute_loop, args=(n,), name=f"mergetui-compute-{n}", daemon=True)
        for n in range(workers)
    ]
    threads = [reader_thread, writer_thread, *compute_threads]
    for thread in threads:
        thread.start()
    try:
        _watch(compute_threads, halted)
        if not halted():
            _put_write(writes, None, stop)  # every piece is computed: the writer may finish
            _watch([writer_thread], halted)
        _raise_if_cancelled(cancel)
        if errors:
            raise errors[0]
        writer.finish()
        return ledger
    finally:
        stop.set()
        budget.close()
        gate.close()
        for thread in threads:
            thread.join()
        reader.close()
        writer.close()
        _use_all_cores()  # the workers changed the default for threads started later


# How a piece's inputs reach the method.
_WHOLE = "whole"  # whole tensors in the compute dtype (element-wise pieces: their elements)
_STORED = "stored"  # chunk sources over whole tensors held as stored
_FROM_FILE = "file"  # chunk sources that read each slice from the file


def _input_mode(piece: _Piece, chunked: bool) -> str:
    tensor = piece.tensor
    if not chunked or tensor.copy_only or piece.fast_copy:
        return _WHOLE
    if tensor.elementwise or any(source.offset < 0 for source in tensor.inputs):
        return _STORED  # pieces are small already; pytorch .bin files have no byte ranges
    stored = sum(source.nbytes for source in tensor.inputs)
    return _FROM_FILE if stored > CHUNKS_FROM_FILE_BYTES else _STORED


def _compute_dtype(tensor: PlannedTensor) -> torch.dtype:
    """float32, or float64 when an input is stored in float64 (as mergekit computes)."""
    import torch

    wide = any(source.dtype == "F64" for source in tensor.inputs)
    return torch.float64 if wide else torch.float32


def _file_sources(reader: Any, piece: _Piece, device: torch.device) -> list[tuple[Any, None]]:
    """Chunk sources over the files, after asking the kernel to read the ranges ahead."""
    from mergetui.merge.chunked import FileSource

    tensor = piece.tensor
    compute_dtype = _compute_dtype(tensor)
    for source in tensor.inputs:
        reader.will_need(source.file, source.offset, source.nbytes)
    return [(FileSource(reader, source, compute_dtype, device), None) for source in tensor.inputs]


def _held_bytes(piece: _Piece, convert_early: bool) -> int:
    """Bytes the inputs of a piece occupy while queued and computed."""
    tensor = piece.tensor
    total = 0
    for source in tensor.inputs:
        itemsize = source.nbytes // source.numel if source.numel else 0
        if convert_early:
            itemsize = 8 if source.dtype == "F64" else 4
        total += itemsize * piece.numel
    return total


def _read_piece(
    reader: Any,
    piece: _Piece,
    convert_early: bool,
    pool: _BufferPool,
    ledger: _Ledger | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The inputs of one piece on the CPU, each with the pooled buffer behind it (or None):
    in float32 (float64) when converting early, else as stored."""

    from mergetui.dtypes import torch_dtype

    tensor = piece.tensor
    data: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    compute_dtype = _compute_dtype(tensor)
    for source in tensor.inputs:
        shape = source.shape if piece.whole else (piece.numel,)
        buffer: torch.Tensor | None = None
        if source.offset < 0:  # pytorch .bin: the whole tensor, then the piece's elements
            value = reader.read(
                source.file, -1, source.nbytes, source.dtype, source.shape, source.tensor
            )
            if not piece.whole:
                value = value.reshape(-1)[piece.start : piece.stop]
        else:
            itemsize = source.nbytes // source.numel if source.numel else 0
            nbytes = piece.numel * itemsize
            buffer = pool.take(nbytes)
            if convert_early and ledger is not None:
                ledger.add(nbytes)  # held here until converted (the budget counts float32)
            value = reader.read(
                source.file,
                source.offset + piece.start * itemsize,
                nbytes,
                source.dtype,
                shape,
                source.tensor,
                out=buffer,
            )
        if convert_early:
            converted_buffer = pool.take(piece.numel * compute_dtype.itemsize)
            converted = converted_buffer.view(compute_dtype).view(shape)
            converted.copy_(value)
            pool.give(buffer)
            if buffer is not None and ledger is not None:
                ledger.add(-buffer.numel())
            value, buffer = converted, converted_buffer
        elif value.dtype != torch_dtype(source.dtype):  # pragma: no cover - defensive
            raise RuntimeError(f"{source.tensor} read as {value.dtype}, expected {source.dtype}")
        data.append((value, buffer))
    return data


def _next_loaded(loaded: queue.Queue[tuple[int, Any]], stop: threading.Event) -> Any:
    """The next piece the reader loaded, or None once the run is stopping."""
    while not stop.is_set():
        try:
            return loaded.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue
    return None


def _put_write(writes: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Queue an item for the writer; False once the run is stopping."""
    while not stop.is_set():
        try:
            writes.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _watch(threads: list[threading.Thread], halted: Callable[[], bool]) -> None:
    """Wait for the threads to end, or until the run halts (a cancel, passed on to every thread
    by `halted`, or an error)."""
    while not halted():
        alive = [thread for thread in threads if thread.is_alive()]
        if not alive:
            return
        alive[0].join(_POLL_SECONDS)


def _footprint(piece: _Piece, held: int, mode: str, streams: bool, cache_elements: int = 0) -> int:
    """Bytes a piece occupies while it computes: inputs held, result, float32 temporaries, and
    the float32 copy per non-base input a method caches for tensors up to `cache_elements`."""
    tensor = piece.tensor
    out_bytes = tensor.nbytes * piece.numel // tensor.numel if tensor.numel else 0
    if mode == _WHOLE:  # float32 result and about two float32 temporaries of the whole
        return held + out_bytes + 3 * 4 * piece.numel
    working = chunk_working_bytes(tensor, piece.numel, cache_elements)
    return held + working + (0 if streams else out_bytes)


def _compute(
    plan: Plan,
    piece: _Piece,
    data: list[tuple[torch.Tensor, torch.Tensor | None]],
    method: Callable[..., torch.Tensor],
    device: torch.device,
    cancel: threading.Event | None,
    mode: str = _WHOLE,
    pool: _BufferPool | None = None,
    sink: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One piece of an output tensor, contiguous on the CPU in its output dtype, with the pooled
    buffer holding it (to recycle once written) or None; None when the method sent its output to
    `sink` chunk by chunk instead.

    Takes ownership of `data` (emptied here): the input buffers go back to the pool as soon as
    the method is done with them, except one the result still lives in.
    """
    import torch

    from mergetui.dtypes import torch_dtype
    from mergetui.merge.methods import MethodContext

    tensor = piece.tensor
    out_dtype = torch_dtype(tensor.dtype)
    values = [value for value, _ in data]
    buffers = [buffer for _, buffer in data]
    data.clear()

    def recycle(result: torch.Tensor | None) -> torch.Tensor | None:
        """Give the input buffers back to the pool, but the one `result` lives in (returned)."""
        held = None
        result_storage = -1
        if result is not None and result.device.type == "cpu":
            result_storage = result.untyped_storage().data_ptr()
        for buffer in buffers:
            if buffer is not None and buffer.untyped_storage().data_ptr() == result_storage:
                held = buffer
            elif pool is not None:
                pool.give(buffer)
        buffers.clear()
        return held

    def finish(result: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Recycle the input buffers the result does not live in; cast into a pooled buffer."""
        held = recycle(result)
        if result.dtype == out_dtype and result.device.type == "cpu" and result.is_contiguous():
            return result, held
        nbytes = result.numel() * torch.empty((), dtype=out_dtype).element_size()
        target = pool.take(nbytes) if pool is not None else torch.empty(nbytes, dtype=torch.uint8)
        cast = target.view(out_dtype).view(result.shape)
        cast.copy_(result)
        if held is not None and pool is not None:
            pool.give(held)
        return cast, target

    if tensor.copy_only:
        first = values[0]
        for other, source in zip(values[1:], tensor.inputs[1:], strict=True):
            if not torch.equal(first, other):
                raise UserError(
                    f"the non-floating buffer {tensor.name} differs between "
                    f"{tensor.inputs[0].model!r} and {source.model!r}; it cannot be averaged",
                    where=tensor.name,
                    fix="merge models whose integer buffers agree",
                )
        return finish(first.contiguous())
    if piece.fast_copy:
        return finish(values[0].contiguous())

    compute_dtype = _compute_dtype(tensor)
    if mode == _FROM_FILE:
        inputs = values
    elif mode == _STORED:
        from mergetui.merge.chunked import StoredSource

        inputs = [StoredSource(v.to(device=device), compute_dtype) for v in values]
    else:
        inputs = [v.to(device=device, dtype=compute_dtype, non_blocking=True) for v in values]
    values = []
    ctx = MethodContext(
        method=plan.method,
        tensor_name=tensor.name,
        base_index=tensor.base_index,
        shared=dict(tensor.shared),
        per_model=[dict(p) for p in tensor.per_model],
        seed=plan.seed,
        cancel=cancel,
        device=device,
        input_names=[i.model for i in tensor.inputs],
        out_dtype=None if mode == _WHOLE else out_dtype,
        sink=sink,
    )
    expected = tensor.shape if piece.whole else (piece.numel,)
    with torch.inference_mode():
        result = method(inputs, ctx)
        inputs.clear()
        if result is STREAMED:
            recycle(None)
            return None
        if tuple(result.shape) != tuple(expected):
            raise RuntimeError(
                f"method {plan.method} returned shape {tuple(result.shape)} for {tensor.name}, "
                f"expected {tuple(expected)}"
            )
        if result.device.type != "cpu":
            result = result.to(dtype=out_dtype).to("cpu")
        return finish(result.contiguous())


# ----------------------------------------------------------------------------------------------
# Folders


def _check_free_space(parent: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    margin = 16 * 1024 * 1024
    if free < needed + margin:
        raise UserError(
            f"not enough free disk space: the merge writes {human_bytes(needed)} but only "
            f"{human_bytes(free)} is free",
            where=str(parent),
            fix="free some space or choose another --out",
        )


def _remove(temp: TempFolder | None) -> None:
    if temp is not None:
        temp.remove()


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("merge cancelled")


# glibc's malloc gives blocks over a threshold (128 KiB, rising to what was last freed) their own
# mmap, so a chunk's float32 temporaries (512 KiB) often come as fresh pages: a page fault per
# 4 KiB, tens of thousands per tensor. Serving blocks up to this size from the heap lets every
# chunk reuse the memory the previous one freed (a third to half fewer faults, measured).
_MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_allocator_tuned = False


def _tune_allocator() -> None:
    """Ask glibc to keep chunk-sized blocks on the heap (once per process; no-op elsewhere)."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: keep their defaults
        return
    mallopt(_M_MMAP_THRESHOLD, _MALLOC_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, 2 * _MALLOC_MMAP_THRESHOLD)


def _core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return os.cpu_count() or 1


def _use_all_cores() -> None:
    import torch

    cores = _core_count()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)


def _os_user_error(exc: OSError, target: Path) -> UserError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            "the disk is full: no space left to write the merged model",
            where=str(target.parent),
            fix="free some space or choose another --out",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(
            f"cannot write there: {exc.strerror}",
            where=str(exc.filename or target),
            fix="choose an output folder you can write to",
        )
    return UserError(f"{exc.strerror or exc}", where=str(exc.filename or target))
