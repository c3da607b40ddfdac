"""Operations over a selection of cells: set, add, multiply, nudge, presets, interpolation, copy and
paste. Each turns the selection into new cell values and hands them to the table's `apply` (one undo
step, clamped to the parameter's range, written back to the recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mergetui.editing.cells import NA, Block, CellRange, GridError
from mergetui.editing.presets import PRESET_TITLES, preset_values

if TYPE_CHECKING:
    from mergetui.editing.layer_table import GridModel

STEP_LADDER = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_STEP = 0.05


def next_step(step: float, direction: int) -> float:
    """The next step on the ladder up (+1) or down (-1) from `step`."""
    if direction > 0:
        return next((s for s in STEP_LADDER if s > step * (1 + 1e-9)), STEP_LADDER[-1])
    return next((s for s in reversed(STEP_LADDER) if s < step * (1 - 1e-9)), STEP_LADDER[0])


class SelectionOperations:
    """The operations of `GridModel` over a `CellRange` (a mixin: it reads the table's cells and
    writes through its `apply`)."""

    def editable_cells(self: GridModel, area: CellRange) -> list[tuple[int, int]]:
        """The cells of `area` an edit may change (layer rows, writable columns, used cells)."""
        return [cell for cell in area.cells() if self.editable(*cell)]

    def set_value(self: GridModel, area: CellRange, value: float) -> int:
        """Every editable cell of `area` to `value`; returns how many changed."""
        return self.apply(
            {cell: value for cell in self.editable_cells(area)}, f"set {_n(area)} to {value:g}"
        )

    def add(self: GridModel, area: CellRange, delta: float) -> int:
        """Add `delta` to every editable cell of `area` that has a value."""
        return self._map_values(area, lambda v: v + delta, f"add {delta:g}")

    def multiply(self: GridModel, area: CellRange, factor: float) -> int:
        """Multiply every editable cell of `area` that has a value by `factor`."""
        return self._map_values(area, lambda v: v * factor, f"multiply by {factor:g}")

    def _map_values(
        self: GridModel, area: CellRange, change: Callable[[float], float], label: str
    ) -> int:
        changes = {
            cell: change(self.value(*cell))
            for cell in self.editable_cells(area)
            if self.value(*cell) is not None
        }
        return self.apply(changes, label)

    def nudge(self: GridModel, area: CellRange, direction: int) -> int:
        """One step (the table's `step`) up (+1) or down (-1)."""
        return self.add(area, self.step * direction)

    def preset(
        self: GridModel,
        area: CellRange,
        name: str,
        low: float,
        high: float,
        *,
        at_layer: int | None = None,
        seed: int | None = None,
    ) -> int:
        """Fill each selected column with the curve over the selected layer rows."""
        rows = self.layer_rows(area.rows)
        changes: dict[tuple[int, int], float] = {}
        rng_seed = seed
        for offset, col in enumerate(area.columns):
            if name == "random" and seed is not None:
                rng_seed = seed + offset  # each column its own reproducible draw
            values = preset_values(
                name,
                len(rows),
                low,
                high,
                layers=[self.rows[r].layer for r in rows],
                at_layer=at_layer,
                seed=rng_seed,
            )
            for r, v in zip(rows, values, strict=True):
                if self.editable(r, col):
                    changes[(r, col)] = v
        return self.apply(changes, f"preset {PRESET_TITLES.get(name, name)}")

    def interpolate(self: GridModel, area: CellRange) -> int:
        """Straight line in each column from the first selected layer's value to the last's."""
        rows = self.layer_rows(area.rows)
        if len(rows) < 3:
            raise GridError("select at least three layer rows to interpolate between the ends")
        changes: dict[tuple[int, int], float] = {}
        for col in area.columns:
            first, last = self.value(rows[0], col), self.value(rows[-1], col)
            if first is NA or last is NA or first is None or last is None:
                continue
            for i, r in enumerate(rows):
                changes[(r, col)] = first + (last - first) * i / (len(rows) - 1)
        if not changes:
            raise GridError("the first and last selected rows need values to interpolate between")
        return self.apply(changes, "interpolate")

    def copy(self: GridModel, area: CellRange) -> Block:
        """The values of `area` (None where a cell has none or is not used)."""
        rows: list[list[float | None]] = []
        for r in area.rows:
            row = []
            for c in area.columns:
                value = self.value(r, c)
                row.append(None if value is NA or value is None else value)
            rows.append(row)
        return Block(rows)

    def paste(self: GridModel, block: Block, at: tuple[int, int]) -> int:
        """Paste with the block's top-left at `at`; cells past the grid's edge are dropped."""
        changes: dict[tuple[int, int], float] = {}
        n_rows, n_cols = self.shape
        for i, row in enumerate(block.values):
            for j, value in enumerate(row):
                cell = (at[0] + i, at[1] + j)
                if value is None or cell[0] >= n_rows or cell[1] >= n_cols:
                    continue
                changes[cell] = value
        return self.apply(changes, "paste")


def _n(area: CellRange) -> str:
    return "1 cell" if area.size == 1 else f"{area.size} cells"
