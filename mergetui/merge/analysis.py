"""Merge insight's results: where checkpoints differ, tensor by tensor, summed up per layer and
block kind.

The metrics compare every model with a *reference*: the base when there is one, else the first
model. For each other model x and the reference r, over any group of tensors G:

- cosine      sum_G <x, r> / sqrt(sum_G |x|^2 * sum_G |r|^2)
- distance    sqrt(sum_G |x - r|^2) / sqrt(sum_G |r|^2)        (relative size of the task vector)
- agreement   of the task vectors tau_i = x_i - r (two or more of them): among the entries where at
              least two task vectors are non-zero, the share where all the non-zero ones have the
              same sign. A task vector that is exactly 0 at an entry abstains there (TIES ignores it
              too); when no entry has two non-zero task vectors the agreement is 1 (nothing
              conflicts). For two task vectors this is simply the share of entries whose signs agree.

Only whole-tensor sums are needed (dot products, squared norms, two counts): `TensorSums` holds one
tensor's, laid out as `Sums` says. A group's metrics come from the sums of its tensors' sums, never
from averaging per-tensor metrics: a big MLP matrix weighs more than a norm vector, exactly as in
the model's own geometry. What is read is decided in analysis_plan.py (and cached there); the sums
are computed in analysis_run.py (`analyze`).

Plain Python, no torch: the recipe-editing model imports the result types.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mergetui.checkpoints.layers import BLOCK_KINDS

ANALYSIS_VERSION = 1
METRICS: tuple[str, ...] = ("cosine", "distance", "agreement")
METRIC_TITLES: dict[str, str] = {"cosine": "cos", "distance": "dist", "agreement": "agree"}
METRIC_DESCRIPTIONS: dict[str, str] = {
    "cosine": "cosine similarity of each model to the reference (1 = same direction)",
    "distance": "relative distance |x - ref| / |ref| of each model (0 = identical)",
    "agreement": "share of entries where the task vectors' signs agree (what TIES elects on)",
}
# Per-model metrics are one number per model; agreement is one number for all the task vectors.
PER_MODEL_METRICS = frozenset({"cosine", "distance"})
# The block kinds metrics are grouped by, in the order they are shown.
KINDS: tuple[str, ...] = BLOCK_KINDS
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
