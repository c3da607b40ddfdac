"""How the engine runs a plan's tensors, decided before a thread starts: the work model.

Tensors become pieces (element-wise methods stream big tensors in runs of PIECE_ELEMENTS); each
piece gets an input mode (whole tensors, chunk sources over held bytes, or chunk sources that read
the files), a size held by the reader and a footprint while it computes. From those follow the
number of workers, the compute gate's budget, the reader's byte budget, the buffer pool's limit
and the writer queue's length; the pipeline runs by them, and `WorkModel.bound` is the most memory
the run's ledger can count (the plan's peak estimate is the process baseline plus that bound).
Plain Python: the planner uses it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mergetui.merge.methods._common import CHUNK_ELEMENTS
from mergetui.merge.plan import (
    CHUNKS_FROM_FILE_BYTES,
    PIECE_ELEMENTS,
    SHARED_WORKING_BYTES,
    chunk_working_bytes,
)

if TYPE_CHECKING:
    from mergetui.merge.plan_tensors import PlannedTensor

# How far past the largest input set the reader may prefetch.
PREFETCH_MARGIN_BYTES = 64 * 1024 * 1024
# On the CPU, up to this many pieces are merged at once, one per core. torch's intra-op threads
# gain little on chunk-sized operations (memory-bound, and every barrier waits for the slowest
# thread, which stalls whenever anything else wants the CPU), while pieces side by side scale.
MAX_WORKERS = 4
# The buffer pool keeps buffers of at least this many bytes (smaller ones are not worth it).
POOL_MIN_BYTES = 1 << 20

# How a piece's inputs reach the method.
WHOLE = "whole"  # whole tensors in the compute dtype (element-wise pieces: their elements)
STORED = "stored"  # chunk sources over whole tensors held as stored
FROM_FILE = "file"  # chunk sources that read each slice from the file


@dataclass(frozen=True)
class Piece:
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


def split_pieces(tensors: Sequence[PlannedTensor], method: str) -> list[Piece]:
    """The plan's tensors as pieces, in plan order."""
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
                pieces.append(Piece(tensor, start, min(total, start + PIECE_ELEMENTS), fast))
        else:
            pieces.append(Piece(tensor, 0, total, fast))
    return pieces


@dataclass
class WorkModel:
    """How the engine runs a plan's pieces, and the memory limits that follow from them (set on
    creation): the pipeline runs by it, and the plan's peak estimate is the process baseline plus
    its `bound()`."""

    pieces: list[Piece]
    modes: list[str]
    early: list[bool]  # the reader converts the inputs to float32 (float64)
    sizes: list[int]  # bytes of inputs held
    footprints: list[int]  # bytes while computing (see `_footprint`)
    streams: bool  # the method hands its output to the writer chunk by chunk
    workers: int
    cores: int
    gate_budget: int = field(init=False)  # the compute gate's
    reader_budget: int = field(init=False)  # the reader's byte budget
    pool_limit: int = field(init=False)  # the buffer pool's
    queue_items: int = field(init=False)  # the writer queue's length

    def __post_init__(self) -> None:
        sizes, workers = self.sizes, self.workers
        # Pieces run side by side while their footprints add up to at most the largest one's, or
        # SHARED_WORKING_BYTES.
        self.gate_budget = max(max(self.footprints, default=0), SHARED_WORKING_BYTES)
        largest = max(sizes, default=0)
        shared = [
            n
            for n, f in zip(sizes, self.footprints, strict=True)
            if f * workers <= self.gate_budget
        ]
        shared = shared if workers > 1 else []
        # Enough held for every worker's set, then a prefetch margin (streamed pieces always get
        # one more set in flight, read while the others compute).
        streamed = max(
            (n for p, n in zip(self.pieces, sizes, strict=True) if not p.whole), default=0
        )
        held_limit = max(largest, workers * max(shared, default=0))
        self.reader_budget = held_limit + max(streamed, min(PREFETCH_MARGIN_BYTES, largest // 2))
        self.pool_limit = min(max(2 * held_limit, 8 * 1024 * 1024), 512 * 1024 * 1024)
        self.queue_items = 4 * workers

    def bound(self) -> int:
        """The most the ledger can count in a run by this model: the reader's budget, each
        worker's largest working set, the pool (when a buffer is big enough to be pooled), the
        most bytes in flight to the writer, and the raw bytes the reader converts."""
        working = max((f - s for f, s in zip(self.footprints, self.sizes, strict=True)), default=0)
        buffers, items, scratch = self._piece_bytes()
        pool = self.pool_limit if buffers >= POOL_MIN_BYTES else 0
        flying = sum(sorted(items, reverse=True)[: self._in_flight])
        return (
            self.reader_budget
            + min(self.workers, len(self.pieces)) * working
            + pool
            + flying
            + scratch
        )

    @property
    def _in_flight(self) -> int:
        return self.queue_items + 1 + self.workers  # queued, being written, being handed on

    def _piece_bytes(self) -> tuple[int, list[int], int]:
        """The largest pooled buffer, every item the writer may get, the largest raw read."""
        buffers, items, scratch = 0, [], 0
        for piece, mode, early in zip(self.pieces, self.modes, self.early, strict=True):
            stored = max(s.nbytes * piece.numel // max(1, s.numel) for s in piece.tensor.inputs)
            out = piece.tensor.nbytes * piece.numel // max(1, piece.tensor.numel)
            if early:
                scratch = max(scratch, stored)
            if self.streams and mode != WHOLE:
                row = piece.tensor.shape[-1] if piece.tensor.shape else 1
                chunk = min(piece.numel, max(CHUNK_ELEMENTS, row)) * out // max(1, piece.numel)
                items += [chunk] * min(self._in_flight, -(-out // max(1, chunk)))
            else:
                items.append(out)
            if mode != FROM_FILE:
                buffers = max(buffers, stored, out, 8 * piece.numel if early else 0)
        return buffers, items, scratch


def work_model(
    tensors: Sequence[PlannedTensor], method_name: str, device_type: str, cores: int
) -> WorkModel:
    """How `cores` cores (or one GPU) run these tensors for this method."""
    from mergetui.recipe.methods import METHODS

    spec = METHODS[method_name]
    pieces = split_pieces(tensors, method_name)
    # A method whose spec says `reads_chunks` gets its whole-tensor inputs as chunk sources
    # (chunked.py): held as stored, or for the largest sets not held at all but read from the
    # file slice by slice. Otherwise, on the CPU, the reader thread converts inputs to float32
    # (off the compute threads); on a GPU the stored bytes travel and are converted there.
    chunked = spec.reads_chunks
    modes = [_input_mode(p, chunked) for p in pieces]
    # The largest tensors (read from the files slice by slice) go first: they take longest, and
    # one left for the end would run alone while the other workers have nothing left to do.
    order = sorted(range(len(pieces)), key=lambda i: modes[i] != FROM_FILE)
    pieces, modes = [pieces[i] for i in order], [modes[i] for i in order]
    early = [
        device_type == "cpu" and mode == WHOLE and not (p.tensor.copy_only or p.fast_copy)
        for p, mode in zip(pieces, modes, strict=True)
    ]
    sizes = [
        0 if mode == FROM_FILE else _held_bytes(p, convert)
        for p, mode, convert in zip(pieces, modes, early, strict=True)
    ]
    # A method that streams its output (OutputChunks) hands it to the writer chunk by chunk.
    streams = chunked and spec.streams_output
    cache_elements = spec.cache_elements if chunked else 0
    footprints = [
        _footprint(p, size, mode, streams, cache_elements)
        for p, size, mode in zip(pieces, sizes, modes, strict=True)
    ]
    workers = min(cores, MAX_WORKERS) if device_type == "cpu" else 1
    return WorkModel(pieces, modes, early, sizes, footprints, streams, workers, cores)


def _input_mode(piece: Piece, chunked: bool) -> str:
    tensor = piece.tensor
    if not chunked or tensor.copy_only or piece.fast_copy:
        return WHOLE
    if tensor.elementwise or any(source.offset < 0 for source in tensor.inputs):
        return STORED  # pieces are small already; pytorch .bin files have no byte ranges
    stored = sum(source.nbytes for source in tensor.inputs)
    return FROM_FILE if stored > CHUNKS_FROM_FILE_BYTES else STORED


def _held_bytes(piece: Piece, convert_early: bool) -> int:
    """Bytes the inputs of a piece occupy while queued and computed."""
    tensor = piece.tensor
    total = 0
    for source in tensor.inputs:
        itemsize = source.nbytes // source.numel if source.numel else 0
        if convert_early:
            itemsize = 8 if source.dtype == "F64" else 4
        total += itemsize * piece.numel
    return total


def _footprint(piece: Piece, held: int, mode: str, streams: bool, cache_elements: int = 0) -> int:
    """Bytes a piece occupies while it computes: inputs held, result, float32 temporaries, and
    the float32 copy per non-base input a method caches for tensors up to `cache_elements`."""
    tensor = piece.tensor
    out_bytes = tensor.nbytes * piece.numel // tensor.numel if tensor.numel else 0
    if mode == WHOLE:  # float32 result and about two float32 temporaries of the whole
        return held + out_bytes + 3 * 4 * piece.numel
    working = chunk_working_bytes(tensor, piece.numel, cache_elements)
    return held + working + (0 if streams else out_bytes)
