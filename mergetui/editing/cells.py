"""The grid's vocabulary: rows, columns, cell values, selections and copied blocks.

Plain data shared by the layer table, the operations over a selection and the suggest rule. A cell
holds a float, None (the recipe gives no value) or NA (the merge does not use this cell at all).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from mergetui.merge.analysis import KINDS, METRIC_TITLES
from mergetui.recipe.methods import ParamSpec

Group = Literal["all", "attention", "mlp", "rest"]
ALL: Group = "all"
ATTENTION: Group = "attention"
MLP: Group = "mlp"
REST: Group = "rest"
SPLIT_GROUPS: tuple[Group, ...] = (ATTENTION, MLP, REST)
GROUP_LABELS: dict[str, str] = {ALL: "", ATTENTION: "attn", MLP: "mlp", REST: "rest"}

SIGNIFICANT_DIGITS = 6


class _NotApplicable:
    """A cell that does not exist for the merge (a model absent from a slice, attention at the head)."""

    def __repr__(self) -> str:
        return "NA"

    def __bool__(self) -> bool:
        return False


NA: Any = _NotApplicable()
CellValue = Any  # float | None (no value) | NA


class GridError(Exception):
    """An edit the grid cannot make; the message is meant for the person editing."""


# Rows and columns


@dataclass(frozen=True)
class GridRow:
    """One output row. `layer` is the output layer index (None for embeddings and head)."""

    kind: Literal["embed", "layer", "head"]
    slice_index: int
    layer: int | None = None
    local: int = 0
    length: int = 1
    # (model, source layer) pairs feeding this output layer, for labels in layer stacks.
    sources: tuple[tuple[str, int], ...] = ()

    @property
    def t(self) -> float:
        """mergekit's gradient position: i/(n-1) in the slice, 1 for a one-layer slice, 0 outside."""
        if self.kind != "layer":
            return 0.0
        return self.local / (self.length - 1) if self.length > 1 else 1.0


@dataclass(frozen=True)
class GridColumn:
    """One column: a parameter, for one model (None: shared), for a group of tensors."""

    param: str
    model: str | None
    group: Group = ALL
    read_only: str | None = None  # why the column cannot be edited here, if it cannot
    # A metric overlay column (see `GridModel.metric`): `param` is the metric's name.
    metric: bool = False

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.param, self.model)

    @property
    def title(self) -> str:
        name = METRIC_TITLES.get(self.param, self.param) if self.metric else self.param
        return name if self.model is None else f"{name}·{self.model}"


@dataclass(frozen=True)
class CellRange:
    """A rectangle of cells, inclusive on both ends, in grid coordinates (row, column)."""

    top: int
    left: int
    bottom: int
    right: int

    @classmethod
    def spanning(cls, a: tuple[int, int], b: tuple[int, int]) -> CellRange:
        return cls(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))

    @property
    def rows(self) -> range:
        return range(self.top, self.bottom + 1)

    @property
    def columns(self) -> range:
        return range(self.left, self.right + 1)

    def cells(self) -> Iterable[tuple[int, int]]:
        for row in self.rows:
            for col in self.columns:
                yield row, col

    def __contains__(self, cell: object) -> bool:
        if not isinstance(cell, tuple) or len(cell) != 2:
            return False
        return self.top <= cell[0] <= self.bottom and self.left <= cell[1] <= self.right

    @property
    def size(self) -> int:
        return (self.bottom - self.top + 1) * (self.right - self.left + 1)


@dataclass
class Block:
    """Copied cells: rows of values (None where a cell had no value or could not be copied)."""

    values: list[list[float | None]] = field(default_factory=list)

    @property
    def height(self) -> int:
        return len(self.values)

    @property
    def width(self) -> int:
        return max((len(row) for row in self.values), default=0)

    def to_text(self) -> str:
        """Tab-separated, one line per row: pastes into a spreadsheet and back."""
        return "\n".join(
            "\t".join("" if v is None else format_number(v, precise=True) for v in row)
            for row in self.values
        )

    @classmethod
    def from_text(cls, text: str) -> Block:
        """Parse numbers separated by tabs, commas or spaces, one row per line."""
        rows: list[list[float | None]] = []
        for line in text.strip().splitlines():
            cells = [c for c in line.replace(",", "\t").replace(";", "\t").split() if c]
            row: list[float | None] = []
            for cell in cells:
                try:
                    row.append(float(cell))
                except ValueError:
                    raise GridError(f"cannot paste {cell!r}: not a number") from None
            if row:
                rows.append(row)
        if not rows:
            raise GridError("nothing to paste: the clipboard holds no numbers")
        return cls(rows)


# ---------------------------------------------------------------------------------------------------
# Numbers


def round_value(value: float) -> float:
    """Keep stored values readable in the recipe file (0.30000000000000004 -> 0.3)."""
    if value == 0 or not math.isfinite(value):
        return 0.0 if value == 0 else value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def format_number(value: float, precise: bool = False) -> str:
    """Short text for a cell (at most 6 characters where possible); `precise` for the status line."""
    if precise:
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e4:
        for digits in (4, 3, 2, 1):
            text = f"{value:.{digits}g}"
            if len(text) <= 6:
                return text
        return text
    return f"{value:.0e}"


def as_cell(value: Any) -> CellValue:
    """A resolved value as a cell: numbers as floats, anything else as no value."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def analysis_kinds(group: Group) -> list[str] | None:
    """The analysis's tensor kinds a grid group stands for (None: every kind, the whole layer)."""
    if group == ALL:
        return None
    if group == REST:
        return [k for k in KINDS if k not in (ATTENTION, MLP)]
    return [group]


def param_scale(spec: ParamSpec | None, numbers: list[float]) -> tuple[float, float]:
    """The heat map's scale for a parameter: its declared range, else 0..1 widened to its values.

    Weights have no declared range; scaling them to their own min..max would paint 0.3 and 0.4
    as opposite ends, so the scale always spans at least 0..1.
    """
    if spec is not None and spec.minimum is not None and spec.maximum is not None:
        return float(spec.minimum), float(spec.maximum)
    low = min([0.0, *numbers])
    high = max([1.0, *numbers])
    if spec is not None and spec.minimum is not None:
        low = float(spec.minimum)
    if spec is not None and spec.maximum is not None:
        high = float(spec.maximum)
    return low, high
