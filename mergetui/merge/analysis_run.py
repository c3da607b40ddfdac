"""Computing an analysis: every planned tensor's sums, read and reduced piece by piece.

A tensor is read in pieces of CHUNK_ELEMENTS, each piece converted to float32 on the chosen device,
and the sums accumulated in float64. Like a merge: one reader thread reads the next piece (pread,
see reader.py) while the calling thread computes, so at most a few pieces are in memory whatever
the model size; progress is reported through a callback and a `threading.Event` cancels between
pieces. torch is imported inside the functions.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.device import core_count, resolve_device, use_cores
from mergetui.errors import CancelledError
from mergetui.merge.analysis import Analysis, AnalysisProgress, Sums, TensorSums
from mergetui.merge.analysis_plan import (
    AnalysisPlan,
    AnalysisTensor,
    load_cached,
    plan_analysis,
    store_cached,
)

CHUNK_ELEMENTS = 1 << 21  # must stay below 2**24 (exact float32 sign counts)


def analyze(
    models: Mapping[str, str | Path],
    base: str | None = None,
    *,
    device: str = "auto",
    cancel: threading.Event | None = None,
    on_progress: Callable[[AnalysisProgress], None] | None = None,
    use_cache: bool = True,
    allow_bin: bool = False,
) -> Analysis:
    """Compare the models (see the module docstring); cached results come back at once.

    Raises UserError for unreadable or incomparable checkpoints and CancelledError when `cancel`
    is set (nothing is cached then). `on_progress` is called from the calling thread.
    """
    plan = plan_analysis(models, base, allow_bin=allow_bin)
    return run_analysis(
        plan, device=device, cancel=cancel, on_progress=on_progress, use_cache=use_cache
    )


def run_analysis(
    plan: AnalysisPlan,
    *,
    device: str = "auto",
    cancel: threading.Event | None = None,
    on_progress: Callable[[AnalysisProgress], None] | None = None,
    use_cache: bool = True,
) -> Analysis:
    """Execute a plan (or take its result from the cache)."""
    if use_cache:
        found = load_cached(plan)
        if found is not None:
            if on_progress is not None:
                total = plan.total_bytes
                count = len(plan.tensors)
                on_progress(AnalysisProgress(count, count, total, total, ""))
            return found
    started = time.perf_counter()
    torch_device = resolve_device(device)
    tensors = _compute(plan, torch_device, cancel, on_progress)
    seconds = time.perf_counter() - started
    result = plan.result(tensors, cached=False, seconds=seconds, device=str(torch_device))
    if use_cache:
        store_cached(plan, result)
    return result


@dataclass(frozen=True)
class _Piece:
    tensor: int
    start: int
    stop: int
    last: bool


def _pieces(plan: AnalysisPlan) -> list[_Piece]:
    pieces = []
    for index, tensor in enumerate(plan.tensors):
        for start in range(0, max(tensor.numel, 1), CHUNK_ELEMENTS):
            stop = min(tensor.numel, start + CHUNK_ELEMENTS)
            pieces.append(_Piece(index, start, stop, stop >= tensor.numel))
    return pieces


RING_SETS = 3
BLOCK_ELEMENTS = 1 << 18  # per row of the CPU work matrix: 1 MB in float32


class _Ring:
    """Reused buffers, so no piece lands in freshly mapped memory: RING_SETS sets of raw byte
    buffers (one per model) that the reader fills with the pieces as stored, and one small float32
    work matrix (one row per model) where the computing thread converts a block at a time.

    The reader fills set n % RING_SETS while the computing thread works on an earlier set; with a
    queue of one piece, at most three sets are in use at once. Work blocks of BLOCK_ELEMENTS stay
    in the CPU's cache through every pass over them (convert, subtract, products, signs).
    """

    def __init__(self, plan: AnalysisPlan, device: Any) -> None:
        import torch

        models = len(plan.models)
        largest = min(CHUNK_ELEMENTS, max((t.numel for t in plan.tensors), default=1))
        itemsize = max(
            (s.nbytes // t.numel for t in plan.tensors for s in t.sources if t.numel), default=1
        )
        self.raw = [
            [torch.empty(largest * itemsize, dtype=torch.uint8) for _ in range(models)]
            for _ in range(RING_SETS)
        ]
        # On the CPU, blocks small enough to stay in cache; on a GPU, whole pieces (fewer launches).
        width = min(BLOCK_ELEMENTS, largest) if device.type == "cpu" else largest
        self.work = torch.empty((models, max(width, 1)), dtype=torch.float32, device=device)


class _PieceReader:
    """The reader thread: reads the pieces in order into the ring, one queued ahead at most; an
    error it meets is handed over in the piece's place (the computing thread raises it)."""

    def __init__(self, plan: AnalysisPlan, pieces: list[_Piece], ring: _Ring) -> None:
        from mergetui.merge.reader import TensorReader

        self._plan, self._pieces, self._ring = plan, pieces, ring
        self._reader = TensorReader()
        self._loaded: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._read_loop, name="mergetui-analysis-reader", daemon=True
        )
        self._thread.start()

    def _read_loop(self) -> None:
        import torch

        with torch.inference_mode():
            for number, piece in enumerate(self._pieces):
                if self._stop.is_set():
                    return
                try:
                    buffers = self._ring.raw[number % RING_SETS]
                    data = _read_piece(
                        self._reader, self._plan.tensors[piece.tensor], piece, buffers
                    )
                except BaseException as exc:  # handed to the computing thread, which raises it
                    data = exc
                while not self._stop.is_set():
                    try:
                        self._loaded.put((number, data), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if isinstance(data, BaseException):
                    return

    def take(self, number: int, cancel: threading.Event | None) -> list[Any]:
        """Piece `number`'s values, once read; raises CancelledError on a cancel."""
        while True:
            if cancel is not None and cancel.is_set():
                raise CancelledError("analysis cancelled")
            try:
                index, data = self._loaded.get(timeout=0.05)
                break
            except queue.Empty:
                continue
        if index != number:  # pragma: no cover - defensive
            raise RuntimeError(f"reader out of order: {index} != {number}")
        if isinstance(data, BaseException):
            raise data
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._reader.close()


class _Totals:
    """Each tensor's sums, added up piece by piece, and the progress reported after each piece."""

    def __init__(
        self, plan: AnalysisPlan, on_progress: Callable[[AnalysisProgress], None] | None
    ) -> None:
        self._plan, self._on_progress = plan, on_progress
        self._total_bytes = plan.total_bytes
        self._bytes_done = 0
        self._accumulator: Any = None
        self.results: list[TensorSums] = []

    def add(self, piece: _Piece, sums: Any) -> None:
        acc = self._accumulator
        self._accumulator = sums if acc is None else acc + sums
        tensor = self._plan.tensors[piece.tensor]
        self._bytes_done += sum(
            s.nbytes * (piece.stop - piece.start) // max(tensor.numel, 1) for s in tensor.sources
        )
        if piece.last:
            values = [float(v) for v in self._accumulator.cpu().tolist()]
            values[0] = float(tensor.numel)
            self.results.append(TensorSums(tensor.name, tensor.row, tensor.kind, tuple(values)))
            self._accumulator = None
        if self._on_progress is not None:
            done = len(self.results)
            count = len(self._plan.tensors)
            progress = AnalysisProgress(
                done, count, self._bytes_done, self._total_bytes, tensor.name
            )
            self._on_progress(progress)


def _compute(
    plan: AnalysisPlan,
    device: Any,
    cancel: threading.Event | None,
    on_progress: Callable[[AnalysisProgress], None] | None,
) -> list[TensorSums]:
    """Every planned tensor's sums: the reader thread reads ahead while this thread computes."""
    import torch

    use_cores(core_count())
    pieces = _pieces(plan)
    layout = Sums(len(plan.others))
    ring = _Ring(plan, device)
    reader = _PieceReader(plan, pieces, ring)
    totals = _Totals(plan, on_progress)
    try:
        with torch.inference_mode():
            for number, piece in enumerate(pieces):
                data = reader.take(number, cancel)
                if device.type != "cpu":
                    data = [value.to(device, non_blocking=True) for value in data]
                sums = _piece_sums(data, layout, ring.work)
                del data
                totals.add(piece, sums)
    finally:
        reader.close()
    return totals.results


def _read_piece(
    reader: Any, tensor: AnalysisTensor, piece: _Piece, buffers: list[Any]
) -> list[Any]:
    """The piece's elements of every model, flat, on the CPU, as stored (in the ring's buffers)."""
    count = piece.stop - piece.start
    values = []
    for row, source in enumerate(tensor.sources):
        if source.offset < 0:  # pytorch .bin: the whole tensor, then the piece's elements
            whole = reader.read(
                source.file, -1, source.nbytes, source.dtype, tensor.shape, source.name
            )
            values.append(whole.reshape(-1)[piece.start : piece.stop])
            continue
        itemsize = source.nbytes // tensor.numel if tensor.numel else 0
        values.append(
            reader.read(
                source.file,
                source.offset + piece.start * itemsize,
                count * itemsize,
                source.dtype,
                (count,),
                source.name,
                out=buffers[row][: count * itemsize],
            )
        )
    return values


def _piece_sums(values: list[Any], layout: Sums, work: Any) -> Any:
    """The sums vector (float64) of one piece: `values` are the models' elements as stored, the
    reference first; `work` is a (models, width) float32 matrix on the device.

    Block by block (each small enough to stay in the CPU's cache), the work matrix gets the
    reference r and each task vector d_i = x_i - r (converted and subtracted in one pass); the
    dot products |r|^2, <d_i, r> and |d_i|^2 give the rest without cancellation,
    <x_i, r> = <d_i, r> + |r|^2 and |x_i|^2 = |d_i|^2 + 2<d_i, r> + |r|^2 (identical models give
    exactly |x|^2 = <x, r> = |r|^2); then the signs are counted in place. Short dot products
    summed in float64 keep float32 rounding near 1e-7 whatever the tensor's size.
    """
    import torch

    models = len(values)
    count = values[0].shape[0]
    step = work.shape[1]
    # float64 sums (on the CPU for MPS, which has no float64).
    home = torch.device("cpu") if work.device.type == "mps" else work.device
    total = torch.zeros(2 * models + 1, dtype=torch.float64, device=home)
    for start in range(0, count, step):
        stop = min(count, start + step)
        block = work[:, : stop - start]
        ref = block[0]
        ref.copy_(values[0][start:stop])
        for row in range(1, models):
            torch.sub(values[row][start:stop], ref, out=block[row])
        parts = [torch.dot(ref, ref)]
        parts += [torch.dot(ref, block[row]) for row in range(1, models)]
        parts += [torch.dot(block[row], block[row]) for row in range(1, models)]
        if models >= 3:
            parts += _sign_counts(block[1:])
        else:
            parts += [torch.zeros((), device=work.device)] * 2
        total += torch.stack([p.to(torch.float32) for p in parts]).to(home, torch.float64)
    others = models - 1
    rr = total[0]
    sums = [rr]
    for i in range(others):
        rd = total[1 + i]
        dd = total[1 + others + i]
        sums += [dd + 2 * rd + rr, rd + rr, dd]
    numel = torch.tensor(float(count), dtype=torch.float64, device=home)
    out = torch.stack([numel, *sums, total[-2], total[-1]])
    assert out.numel() == layout.length
    return out


def _sign_counts(deltas: Any) -> list[Any]:
    """(entries where all non-zero task vectors agree in sign, entries with >= 2 non-zero ones).
    Turns `deltas` into their signs, in place."""
    import torch

    signs = deltas.sign_()
    if signs.shape[0] == 2:
        product = signs[0].mul_(signs[1])  # +1 agree, -1 disagree, 0 someone abstains
        # float32 sums of at most CHUNK_ELEMENTS (< 2**24) values of +-1 (or their squares,
        # counting the non-zero ones) are exact.
        balance = product.sum()
        contested = torch.dot(product, product)
        return [(balance + contested) / 2, contested]
    total = signs.sum(0)
    nonzero = signs.abs_().sum(0)
    disputed = nonzero >= 2
    unanimous = disputed & (total.abs_() == nonzero)
    return [unanimous.sum(), disputed.sum()]
