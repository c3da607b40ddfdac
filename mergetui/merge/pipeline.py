"""The threads of one merge: a reader, compute workers and a writer, and the state they share.

- the reader reads the next pieces' inputs (pread, see reader.py) while the current ones are
  being merged; the byte budget (the work model's) lets it run ahead on small tensors but never
  holds two of the large sets at once;
- compute workers (one per core on the CPU, up to MAX_WORKERS; one on a GPU) take the pieces in
  plan order and compute them (compute.py). Pieces small enough to share the memory budget run
  side by side, one torch thread each; a piece too big to share runs alone on every core (see
  `ComputeGate`);
- the writer writes each finished tensor, piece or chunk at its offset in its shard (writer.py)
  and reports TensorDone and ShardWritten.

A cancel or any thread's error sets `stop`: every thread winds down, and the first error is raised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.device import use_cores
from mergetui.errors import CancelledError
from mergetui.merge.budgets import BufferPool, ByteBudget, ComputeGate, Ledger
from mergetui.merge.compute import compute_dtype, compute_piece
from mergetui.merge.events import MergeEvent, ShardWritten, TensorDone
from mergetui.merge.work import FROM_FILE, WHOLE, Piece, WorkModel

if TYPE_CHECKING:
    import torch

    from mergetui.merge.plan import Plan
    from mergetui.merge.plan_tensors import PlannedTensor

POLL_SECONDS = 0.05
# What the writer gets: (tensor, first element, CPU tensor, pooled buffer or None); None: done.
WriteItem = tuple["PlannedTensor", int, Any, Any]


class Progress:
    """What the writer has finished so far (read by the runner for Cancelled)."""

    def __init__(self) -> None:
        self.tensors_done = 0
        self.bytes_done = 0


class Pipeline:
    """Runs every piece of a work model through the reader, compute and writer threads."""

    def __init__(
        self,
        plan: Plan,
        model: WorkModel,
        folder: Path,
        device: torch.device,
        emit: Callable[[MergeEvent], None],
        cancel: threading.Event | None,
        progress: Progress,
    ) -> None:
        from mergetui.merge.methods import get_method_function
        from mergetui.merge.reader import TensorReader
        from mergetui.merge.writer import ShardSetWriter

        self.plan, self.model, self.device = plan, model, device
        self.emit, self.cancel, self.progress = emit, cancel, progress
        self.method = get_method_function(plan.method)
        self.ledger = Ledger()
        self.reader = TensorReader()
        self.writer = ShardSetWriter(folder, plan.layout)
        self.gate = ComputeGate(model.gate_budget, model.workers, model.cores)
        self.budget = ByteBudget(model.reader_budget, self.ledger)
        self.pool = BufferPool(model.pool_limit, self.ledger)
        self.stop = threading.Event()  # set on cancel and on any thread's error
        self.loaded: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._take_lock = threading.Lock()  # pieces leave `loaded` in plan order, one at a time
        self._taken = 0
        self.writes: queue.Queue[WriteItem | None] = queue.Queue(maxsize=model.queue_items)
        self.errors: list[BaseException] = []  # the first is the one raised

    def run(self) -> Ledger:
        """Start the threads, wait for them, and return the ledger of the memory the run held;
        raise CancelledError on a cancel and the first error any thread met."""
        reader = threading.Thread(target=self._read_loop, name="mergetui-reader", daemon=True)
        writer = threading.Thread(target=self._write_loop, name="mergetui-writer", daemon=True)
        workers = [
            threading.Thread(
                target=self._compute_loop, args=(n,), name=f"mergetui-compute-{n}", daemon=True
            )
            for n in range(self.model.workers)
        ]
        threads = [reader, writer, *workers]
        for thread in threads:
            thread.start()
        try:
            self._watch(workers)
            if not self.halted():
                self._put_write(None)  # every piece is computed: the writer may finish
                self._watch([writer])
            if self.cancel is not None and self.cancel.is_set():
                raise CancelledError("merge cancelled")
            if self.errors:
                raise self.errors[0]
            self.writer.finish()
            return self.ledger
        finally:
            self._close(threads)

    def _close(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        self.budget.close()
        self.gate.close()
        for thread in threads:
            thread.join()
        self.reader.close()
        self.writer.close()
        use_cores(self.model.cores)  # the workers changed the default for threads started later

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.stop.set()

    def halted(self) -> bool:
        """Whether to stop now: a cancel (seen by any thread) or an error."""
        if self.cancel is not None and self.cancel.is_set():
            self.stop.set()
        return self.stop.is_set()

    # -- the reader ------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        import torch

        model = self.model
        with torch.inference_mode():
            for number, (piece, size) in enumerate(zip(model.pieces, model.sizes, strict=True)):
                if self.stop.is_set() or not self.budget.acquire(size):
                    return
                try:
                    if model.modes[number] == FROM_FILE:
                        data: Any = _file_sources(self.reader, piece, self.device)
                    else:
                        early = model.early[number]
                        data = read_piece(self.reader, piece, early, self.pool, self.ledger)
                except BaseException as exc:
                    self.fail(exc)
                    return
                self.loaded.put((number, data))
                del data

    # -- the compute workers ---------------------------------------------------------------------

    def _compute_loop(self, worker: int) -> None:
        while not self.halted():
            item = self._take()
            if item is None:
                return
            number, data = item
            del item
            result = self._compute(worker, number, data)
            del data
            if result is False:
                return
            piece = self.model.pieces[number]
            if result is not None and not self._put_write((piece.tensor, piece.start, *result)):
                return
            del result

    def _take(self) -> tuple[int, Any] | None:
        """The next loaded piece in plan order; None once every piece is taken or on a stop."""
        with self._take_lock:
            if self._taken == len(self.model.pieces):
                return None
            item = _next_loaded(self.loaded, self.stop)
            if item is None:
                return None
            self._taken += 1
            return item

    def _compute(self, worker: int, number: int, data: Any) -> Any:
        """Piece `number` computed (a result, or None when streamed); False: the run stops."""
        import torch

        model = self.model
        threads = self.gate.enter(number, model.footprints[number])
        if threads is None:
            return False
        self.ledger.working(worker, model.footprints[number] - model.sizes[number])
        piece, mode = model.pieces[number], model.modes[number]
        sink = self._sink(piece) if model.streams and mode != WHOLE else None
        try:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)  # this thread's own OpenMP team size
            result = compute_piece(
                self.plan, piece, data, self.method, self.device, self.stop, mode, self.pool, sink
            )
            if result is not None:  # on its way to the writer
                self.ledger.add(result[0].numel() * result[0].element_size())
        except BaseException as exc:
            self.fail(exc)
            return False
        finally:
            self.gate.leave()
            self.budget.release(model.sizes[number])
        return result

    def _sink(self, piece: Piece) -> Callable[[int, torch.Tensor], None]:
        """Where a streaming method hands each output chunk: straight to the writer's queue."""

        def sink(start: int, chunk: torch.Tensor) -> None:
            if chunk.device.type != "cpu":
                chunk = chunk.to("cpu")
            item = (piece.tensor, piece.start + start, chunk, None)
            self.ledger.add(chunk.numel() * chunk.element_size())
            if self.halted() or not self._put_write(item):
                raise CancelledError("merge stopped")

        return sink

    # -- the writer ------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            try:
                item = self.writes.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if item is None or self.halted():
                return
            tensor, start, result, buffer = item
            del item
            written, shard = self._write(tensor, start, result)
            del result  # before the events: a listener may take its time
            if not written:
                return
            self.pool.give(buffer)
            if self.writer.is_written(tensor.name):
                self._report(tensor, shard)

    def _write(self, tensor: PlannedTensor, start: int, result: Any) -> tuple[bool, Any]:
        """Write one result at its offset; (False, None) on an error."""
        itemsize = tensor.nbytes // tensor.numel if tensor.numel else 0
        try:
            shard = self.writer.write(tensor.name, result, start * itemsize)
        except BaseException as exc:
            self.fail(exc)
            return False, None
        self.progress.bytes_done += result.numel() * itemsize
        self.ledger.add(-result.numel() * result.element_size())
        return True, shard

    def _report(self, tensor: PlannedTensor, shard: Any) -> None:
        """TensorDone for a tensor written whole, and ShardWritten for a shard it completed."""
        self.progress.tensors_done += 1
        plan = self.plan
        self.emit(
            TensorDone(
                index=tensor.index,
                tensor_count=plan.tensor_count,
                name=tensor.name,
                bytes_written=self.progress.bytes_done,
                total_bytes=plan.total_bytes,
                layer=tensor.layer,
            )
        )
        if shard is not None:
            self.emit(ShardWritten(shard.index, plan.shard_count, shard.filename, shard.file_size))

    # -- waiting ---------------------------------------------------------------------------------

    def _put_write(self, item: WriteItem | None) -> bool:
        """Queue an item for the writer; False once the run is stopping."""
        while not self.stop.is_set():
            try:
                self.writes.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _watch(self, threads: list[threading.Thread]) -> None:
        """Wait for the threads to end, or until the run halts (a cancel, passed on to every
        thread by `halted`, or an error)."""
        while not self.halted():
            alive = [thread for thread in threads if thread.is_alive()]
            if not alive:
                return
            alive[0].join(POLL_SECONDS)


def _next_loaded(loaded: queue.Queue[tuple[int, Any]], stop: threading.Event) -> Any:
    """The next piece the reader loaded, or None once the run is stopping."""
    while not stop.is_set():
        try:
            return loaded.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
    return None


def _file_sources(reader: Any, piece: Piece, device: torch.device) -> list[tuple[Any, None]]:
    """Chunk sources over the files, after asking the kernel to read the ranges ahead."""
    from mergetui.merge.chunked import FileSource

    tensor = piece.tensor
    dtype = compute_dtype(tensor)
    for source in tensor.inputs:
        reader.will_need(source.file, source.offset, source.nbytes)
    return [(FileSource(reader, source, dtype, device), None) for source in tensor.inputs]


def read_piece(
    reader: Any,
    piece: Piece,
    convert_early: bool,
    pool: BufferPool,
    ledger: Ledger | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The inputs of one piece on the CPU, each with the pooled buffer behind it (or None):
    in float32 (float64) when converting early, else as stored."""
    from mergetui.dtypes import torch_dtype
    from mergetui.merge.lora_apply import apply_lora

    tensor = piece.tensor
    data: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    dtype = compute_dtype(tensor)
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
            offset = source.offset + piece.start * itemsize
            value = reader.read(
                source.file, offset, nbytes, source.dtype, shape, source.tensor, out=buffer
            )
        if source.lora is not None:  # a LoRA adapter's change, as the elements are read
            value = apply_lora(reader, source, value, piece.start, in_place=buffer is not None)
        if convert_early:
            converted_buffer = pool.take(piece.numel * dtype.itemsize)
            converted = converted_buffer.view(dtype).view(shape)
            converted.copy_(value)
            pool.give(buffer)
            if buffer is not None and ledger is not None:
                ledger.add(-buffer.numel())
            value, buffer = converted, converted_buffer
        elif value.dtype != torch_dtype(source.dtype):  # pragma: no cover - defensive
            raise RuntimeError(f"{source.tensor} read as {value.dtype}, expected {source.dtype}")
        data.append((value, buffer))
    return data
