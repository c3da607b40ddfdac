"""Merge insight: where checkpoints differ, tensor by tensor, summed up per layer and block kind.

The metrics compare every model with a *reference*: the base when there is one, else the first
model. For each other model x and the reference r, over any group of tensors G:

- cosine      sum_G <x, r> / sqrt(sum_G |x|^2 * sum_G |r|^2)
- distance    sqrt(sum_G |x - r|^2) / sqrt(sum_G |r|^2)        (relative size of the task vector)
- agreement   of the task vectors tau_i = x_i - r (two or more of them): among the entries where at
              least two task vectors are non-zero, the share where all the non-zero ones have the
              same sign. A task vector that is exactly 0 at an entry abstains there (TIES ignores it
              too); when no entry has two non-zero task vectors the agreement is 1 (nothing
              conflicts). For two task vectors this is simply the share of entries whose signs agree.

Only whole-tensor sums are needed (dot products, squared norms, two counts), so a tensor is read in
pieces of CHUNK_ELEMENTS, each piece converted to float32 on the chosen device, and the sums
accumulated in float64. A group's metrics come from the sums of its tensors' sums, never from
averaging per-tensor metrics: a big MLP matrix weighs more than a norm vector, exactly as in the
model's own geometry.

Like a merge: one reader thread reads the next piece (pread, see reader.py) while the calling thread
computes, so at most a few pieces are in memory whatever the model size; progress is reported
through a callback and a `threading.Event` cancels between pieces. Results are cached on disk (in
`paths.analysis_cache_dir`), keyed by every weight file's path, size and modification time, so a
second look is instant and a changed checkpoint is recomputed.

No torch import at module level: the app's grid model imports the result types.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mergetui.checkpoints.layers import block_kind, is_pre_layer, is_skipped, layer_index
from mergetui.dtypes import FLOAT_CODES
from mergetui.errors import CancelledError, UserError
from mergetui.paths import analysis_cache_dir

ANALYSIS_VERSION = 1
CHUNK_ELEMENTS = 1 << 21  # must stay below 2**24 (exact float32 sign counts)
METRICS: tuple[str, ...] = ("cosine", "distance", "agreement")
METRIC_TITLES: dict[str, str] = {"cosine": "cos", "distance": "dist", "agreement": "agree"}
METRIC_DESCRIPTIONS: dict[str, str] = {
    "cosine": "cosine similarity of each model to the reference (1 = same direction)",
    "distance": "relative distance |x - ref| / |ref| of each model (0 = identical)",
    "agreement": "share of entries where the task vectors' signs agree (what TIES elects on)",
}
# Per-model metrics are one number per model; agreement is one number for all the task vectors.
PER_MODEL_METRICS = frozenset({"cosine", "distance"})
KINDS: tuple[str, ...] = ("embedding", "attention", "mlp", "norm", "head", "other")
RowKey = int | Literal["embed", "head"]


# ----------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class AnalysisProgress:
    """How far an analysis is: bytes read of all the inputs, the tensor being read."""

    tensors_done: int
    tensor_count: int
    bytes_done: int
    total_bytes: int
    tensor: str

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.total_bytes if self.total_bytes else 1.0


@dataclass(frozen=True)
class TensorSums:
    """One tensor's partial sums; see `Sums` for the layout."""

    name: str
    row: RowKey
    kind: str
    sums: tuple[float, ...]


class Sums:
    """Index arithmetic over a sums vector for k non-reference models.

    [numel, |r|^2, then per model i: |x_i|^2, <x_i, r>, |x_i - r|^2, then agree, contested].
    Group sums are element-wise sums of these vectors.
    """

    def __init__(self, others: int) -> None:
        self.others = others
        self.length = 2 + 3 * others + 2

    @staticmethod
    def numel(s: Sequence[float]) -> float:
        return s[0]

    @staticmethod
    def ref_sq(s: Sequence[float]) -> float:
        return s[1]

    def model(self, s: Sequence[float], i: int) -> tuple[float, float, float]:
        base = 2 + 3 * i
        return s[base], s[base + 1], s[base + 2]

    def counts(self, s: Sequence[float]) -> tuple[float, float]:
        return s[-2], s[-1]


def cosine_from(dot: float, sq_a: float, sq_b: float) -> float:
    """Cosine from sums; two all-zero groups count as the same direction (1), one as unrelated (0)."""
    if sq_a <= 0 and sq_b <= 0:
        return 1.0
    if sq_a <= 0 or sq_b <= 0:
        return 0.0
    value = dot / math.sqrt(sq_a * sq_b)
    return max(-1.0, min(1.0, value))


def distance_from(diff_sq: float, ref_sq: float) -> float:
    """|x - r| / |r| from sums; against an all-zero reference it is 0 when x is too, else inf."""
    if ref_sq <= 0:
        return 0.0 if diff_sq <= 0 else math.inf
    return math.sqrt(max(diff_sq, 0.0) / ref_sq)


def agreement_from(agree: float, contested: float) -> float:
    return agree / contested if contested > 0 else 1.0


@dataclass(frozen=True)
class GroupMetrics:
    """The metrics of one group of tensors (a layer, a block kind of a layer, the whole model)."""

    cosine: dict[str, float]
    distance: dict[str, float]
    agreement: float | None
    numel: int

    def get(self, metric: str, model: str | None = None) -> float | None:
        """One number: a per-model metric for `model`, or the agreement (model ignored)."""
        if metric == "agreement":
            return self.agreement
        values = self.cosine if metric == "cosine" else self.distance
        return values.get(model) if model is not None else None


@dataclass
class Analysis:
    """Per-tensor sums of one analysis and the groupings people ask for."""

    models: tuple[str, ...]  # every model, in the order given
    reference: str
    has_base: bool
    tensors: list[TensorSums]
    skipped: list[str] = field(default_factory=list)
    num_layers: int = 0
    cached: bool = False
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def others(self) -> tuple[str, ...]:
        """The models compared with the reference, in order."""
        return tuple(m for m in self.models if m != self.reference)

    @property
    def has_agreement(self) -> bool:
        return len(self.others) >= 2

    def rows(self) -> list[RowKey]:
        """The rows that have tensors: "embed", the layers in order, "head"."""
        layers = sorted({t.row for t in self.tensors if isinstance(t.row, int)})
        rows: list[RowKey] = []
        if any(t.row == "embed" for t in self.tensors):
            rows.append("embed")
        rows.extend(layers)
        if any(t.row == "head" for t in self.tensors):
            rows.append("head")
        return rows

    def kinds(self, row: RowKey | None = None) -> list[str]:
        present = {t.kind for t in self.tensors if row is None or t.row == row}
        return [k for k in KINDS if k in present]

    def group(
        self, row: RowKey | None = None, kinds: Iterable[str] | None = None
    ) -> GroupMetrics | None:
        """Metrics over the tensors of `row` (None: every row) whose block kind is in `kinds`
        (None: all); None when no tensor matches."""
        wanted = set(kinds) if kinds is not None else None
        layout = Sums(len(self.others))
        total = [0.0] * layout.length
        found = False
        for tensor in self.tensors:
            if row is not None and tensor.row != row:
                continue
            if wanted is not None and tensor.kind not in wanted:
                continue
            found = True
            for index, value in enumerate(tensor.sums):
                total[index] += value
        if not found:
            return None
        return self._metrics(total, layout)

    def _metrics(self, total: Sequence[float], layout: Sums) -> GroupMetrics:
        ref_sq = layout.ref_sq(total)
        cosine: dict[str, float] = {}
        distance: dict[str, float] = {}
        for i, name in enumerate(self.others):
            sq, dot, diff_sq = layout.model(total, i)
            cosine[name] = cosine_from(dot, sq, ref_sq)
            distance[name] = distance_from(diff_sq, ref_sq)
        agreement = agreement_from(*layout.counts(total)) if self.has_agreement else None
        return GroupMetrics(cosine, distance, agreement, int(layout.numel(total)))

    def table(self) -> list[dict[str, Any]]:
        """One entry per row: the row's metrics and each block kind's (for JSON and the CLI)."""
        out = []
        for row in self.rows():
            whole = self.group(row)
            assert whole is not None
            entry: dict[str, Any] = {"row": row, **_metrics_dict(whole)}
            entry["kinds"] = {}
            for kind in self.kinds(row):
                metrics = self.group(row, [kind])
                assert metrics is not None
                entry["kinds"][kind] = _metrics_dict(metrics)
            out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types (`mergetui diff --json`)."""
        overall = self.group()
        return {
            "version": ANALYSIS_VERSION,
            "models": list(self.models),
            "reference": self.reference,
            "base": self.reference if self.has_base else None,
            "compared": list(self.others),
            "num_layers": self.num_layers,
            "tensor_count": len(self.tensors),
            "skipped": self.skipped,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "overall": _metrics_dict(overall) if overall is not None else None,
            "kinds": {
                kind: _metrics_dict(metrics)
                for kind in self.kinds()
                if (metrics := self.group(None, [kind])) is not None
            },
            "rows": self.table(),
        }


def format_metric(metric: str, value: float | None) -> str:
    """How every part of mergetui prints a metric: cosine to 4 decimals, agreement in percent."""
    if value is None:
        return "-"
    if metric == "cosine":
        return f"{value:.4f}"
    if metric == "agreement":
        return f"{value * 100:.1f}%"
    if value != value or value == float("inf"):
        return "inf"
    return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.1e}"


def _metrics_dict(metrics: GroupMetrics) -> dict[str, Any]:
    return {
        "numel": metrics.numel,
        "cosine": {k: _json_float(v) for k, v in metrics.cosine.items()},
        "distance": {k: _json_float(v) for k, v in metrics.distance.items()},
        "agreement": _json_float(metrics.agreement) if metrics.agreement is not None else None,
    }


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------
# Planning: which tensors, where their bytes are


@dataclass(frozen=True)
class _Source:
    file: Path
    offset: int  # -1 for a pytorch .bin tensor
    nbytes: int
    dtype: str
    name: str


@dataclass(frozen=True)
class _Planned:
    name: str
    row: RowKey
    kind: str
    numel: int
    shape: tuple[int, ...]
    sources: tuple[_Source, ...]  # reference first, then the others in order


@dataclass
class AnalysisPlan:
    """What an analysis will read, decided from headers alone (cheap: no torch)."""

    models: tuple[str, ...]
    reference: str
    has_base: bool
    paths: dict[str, Path]
    tensors: list[_Planned]
    skipped: list[str]
    num_layers: int
    cache_key: dict[str, Any]

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(m for m in self.models if m != self.reference)

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for t in self.tensors for s in t.sources)


def plan_analysis(
    models: Mapping[str, str | Path], base: str | None = None, *, allow_bin: bool = False
) -> AnalysisPlan:
    """Open the checkpoints' headers and decide the tensors to compare.

    `models` maps names to checkpoint folders (at least two); `base`, one of the names, is the
    reference (None: the first model is). Tensors the reference has but another model lacks, or
    holds with another shape, are skipped and listed in `skipped`; non-floating buffers too.
    """
    from mergetui.checkpoints.inspect import open_checkpoint

    names = list(models)
    if len(names) < 2:
        raise UserError("comparing needs at least two models", fix="give two checkpoint folders")
    if base is not None and base not in models:
        raise UserError(f"the base {base!r} is not one of the models", where="base")
    reference = base if base is not None else names[0]
    checkpoints = {
        name: open_checkpoint(path, allow_bin=allow_bin) for name, path in models.items()
    }
    others = [n for n in names if n != reference]
    ref = checkpoints[reference]
    planned: list[_Planned] = []
    skipped: list[str] = []
    for tensor_name, info in ref.tensors.items():
        if is_skipped(tensor_name):
            continue
        if info.dtype not in FLOAT_CODES:
            skipped.append(f"{tensor_name}: {info.dtype} is not a floating-point tensor")
            continue
        sources = [_Source(info.file, info.offset, info.nbytes, info.dtype, tensor_name)]
        problem = None
        for other in others:
            found = checkpoints[other].tensors.get(tensor_name)
            if found is None:
                problem = f"{tensor_name}: missing in {other}"
                break
            if tuple(found.shape) != tuple(info.shape):
                problem = (
                    f"{tensor_name}: shape {list(found.shape)} in {other}, "
                    f"{list(info.shape)} in {reference}"
                )
                break
            if found.dtype not in FLOAT_CODES:
                problem = f"{tensor_name}: {found.dtype} in {other} is not floating-point"
                break
            sources.append(
                _Source(found.file, found.offset, found.nbytes, found.dtype, tensor_name)
            )
        if problem:
            skipped.append(problem)
            continue
        index = layer_index(tensor_name)
        row: RowKey = (
            index if index is not None else ("embed" if is_pre_layer(tensor_name) else "head")
        )
        numel = 1
        for dim in info.shape:
            numel *= dim
        planned.append(
            _Planned(
                tensor_name, row, block_kind(tensor_name), numel, tuple(info.shape), tuple(sources)
            )
        )
    for other in others:
        extra = [n for n in checkpoints[other].tensors if n not in ref.tensors]
        if extra:
            skipped.append(f"{len(extra)} tensor(s) only in {other}, e.g. {extra[0]}")
    if not planned:
        raise UserError(
            "the models have no tensor in common to compare",
            fix="compare checkpoints of the same architecture and size",
        )
    key = {
        "version": ANALYSIS_VERSION,
        "reference": _identity(ref),
        "others": [_identity(checkpoints[o]) for o in others],
    }
    return AnalysisPlan(
        models=tuple(names),
        reference=reference,
        has_base=base is not None,
        paths={n: Path(p) for n, p in models.items()},
        tensors=planned,
        skipped=skipped,
        num_layers=len(ref.layers),
        cache_key=key,
    )


def _identity(checkpoint: Any) -> list[list[Any]]:
    """A checkpoint's weight files as (path, size, mtime_ns): any rewrite changes it."""
    out = []
    for file in checkpoint.weight_files:
        resolved = Path(file).resolve()
        stat = resolved.stat()
        out.append([str(resolved), stat.st_size, stat.st_mtime_ns])
    return out


# ----------------------------------------------------------------------------------------------
# The cache


def cache_path(plan: AnalysisPlan) -> Path:
    digest = hashlib.sha256(json.dumps(plan.cache_key, sort_keys=True).encode()).hexdigest()
    return analysis_cache_dir() / f"{digest[:40]}.json"


def load_cached(plan: AnalysisPlan) -> Analysis | None:
    """The cached result for exactly these files, or None (absent, stale, unreadable)."""
    path = cache_path(plan)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("key") != plan.cache_key:
        return None
    stored = data.get("tensors")
    layout = Sums(len(plan.others))
    if not isinstance(stored, list):
        return None
    by_name = {t.name: t for t in plan.tensors}
    tensors: list[TensorSums] = []
    for entry in stored:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in by_name):
            return None
        sums = entry[1]
        if not (isinstance(sums, list) and len(sums) == layout.length):
            return None
        planned = by_name[entry[0]]
        tensors.append(TensorSums(planned.name, planned.row, planned.kind, tuple(map(float, sums))))
    if len(tensors) != len(plan.tensors):
        return None
    return _result(plan, tensors, cached=True, seconds=float(data.get("seconds", 0.0)))


def store_cached(plan: AnalysisPlan, analysis: Analysis) -> Path | None:
    """Write the result atomically (temp file + rename); a cache that cannot be written is skipped."""
    path = cache_path(plan)
    data = {
        "key": plan.cache_key,
        "seconds": analysis.seconds,
        "tensors": [[t.name, list(t.sums)] for t in analysis.tensors],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
    except OSError:
        return None
    return path


def _result(
    plan: AnalysisPlan,
    tensors: list[TensorSums],
    *,
    cached: bool,
    seconds: float,
    device: str = "cpu",
) -> Analysis:
    return Analysis(
        models=plan.models,
        reference=plan.reference,
        has_base=plan.has_base,
        tensors=tensors,
        skipped=list(plan.skipped),
        num_layers=plan.num_layers,
        cached=cached,
        seconds=seconds,
        device=device,
    )


# ----------------------------------------------------------------------------------------------
# Computing


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
    from mergetui.merge.device import resolve_device

    started = time.perf_counter()
    torch_device = resolve_device(device)
    tensors = _compute(plan, torch_device, cancel, on_progress)
    result = _result(
        plan,
        tensors,
        cached=False,
        seconds=time.perf_counter() - started,
        device=str(torch_device),
    )
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


class _Ring:
    """Reused buffers, so no piece lands in freshly mapped memory: RING_SETS sets of raw byte
    buffers (one per model) that the reader fills with the pieces as stored, and one small float32
    work matrix (one row per model) where the computing thread converts a block at a time.

    The reader fills set n % RING_SETS while the computing thread works on an earlier set; with a
    queue of one piece, at most three sets are in use at once. Work blocks of BLOCK_ELEMENTS stay
    in the CPU's cache through every pass over them (convert, subtract, products, signs).
    """

    def __init__(self, models: int, elements: int, itemsize: int) -> None:
        import torch

        self.raw = [
            [torch.empty(elements * itemsize, dtype=torch.uint8) for _ in range(models)]
            for _ in range(RING_SETS)
        ]


RING_SETS = 3
BLOCK_ELEMENTS = 1 << 18  # per row of the CPU work matrix: 1 MB in float32


def _compute(
    plan: AnalysisPlan,
    device: Any,
    cancel: threading.Event | None,
    on_progress: Callable[[AnalysisProgress], None] | None,
) -> list[TensorSums]:
    import torch

    from mergetui.merge.reader import TensorReader

    _use_all_cores()
    pieces = _pieces(plan)
    layout = Sums(len(plan.others))
    models = len(plan.models)
    largest = min(CHUNK_ELEMENTS, max((t.numel for t in plan.tensors), default=1))
    itemsize = max(
        (s.nbytes // t.numel for t in plan.tensors for s in t.sources if t.numel), default=1
    )
    ring = _Ring(models, largest, itemsize)
    # On the CPU, blocks small enough to stay in cache; on a GPU, whole pieces (fewer launches).
    width = min(BLOCK_ELEMENTS, largest) if device.type == "cpu" else largest
    work = torch.empty((models, max(width, 1)), dtype=torch.float32, device=device)
    reader = TensorReader()
    loaded: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def read_loop() -> None:
        with torch.inference_mode():
            for number, piece in enumerate(pieces):
                if stop.is_set():
                    return
                try:
                    buffers = ring.raw[number % RING_SETS]
                    data = _read_piece(reader, plan.tensors[piece.tensor], piece, buffers)
                except BaseException as exc:  # handed to the computing thread, which raises it
                    data = exc
                while not stop.is_set():
                    try:
                        loaded.put((number, data), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if isinstance(data, BaseException):
                    return

    thread = threading.Thread(target=read_loop, name="mergetui-analysis-reader", daemon=True)
    thread.start()
    results: list[TensorSums] = []
    total_bytes = plan.total_bytes
    bytes_done = 0
    accumulator: Any = None
    try:
        with torch.inference_mode():
            for number, piece in enumerate(pieces):
                while True:
                    if cancel is not None and cancel.is_set():
                        raise CancelledError("analysis cancelled")
                    try:
                        index, data = loaded.get(timeout=0.05)
                        break
                    except queue.Empty:
                        continue
                if index != number:  # pragma: no cover - defensive
                    raise RuntimeError(f"reader out of order: {index} != {number}")
                if isinstance(data, BaseException):
                    raise data
                if device.type != "cpu":
                    data = [value.to(device, non_blocking=True) for value in data]
                sums = _piece_sums(data, layout, work)
                del data
                accumulator = sums if accumulator is None else accumulator + sums
                tensor = plan.tensors[piece.tensor]
                bytes_done += sum(
                    s.nbytes * (piece.stop - piece.start) // max(tensor.numel, 1)
                    for s in tensor.sources
                )
                if piece.last:
                    values = [float(v) for v in accumulator.cpu().tolist()]
                    values[0] = float(tensor.numel)
                    results.append(TensorSums(tensor.name, tensor.row, tensor.kind, tuple(values)))
                    accumulator = None
                if on_progress is not None:
                    on_progress(
                        AnalysisProgress(
                            len(results), len(plan.tensors), bytes_done, total_bytes, tensor.name
                        )
                    )
    finally:
        stop.set()
        thread.join()
        reader.close()
    return results


def _read_piece(reader: Any, tensor: _Planned, piece: _Piece, buffers: list[Any]) -> list[Any]:
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


def _use_all_cores() -> None:
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        cores = os.cpu_count() or 1
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
