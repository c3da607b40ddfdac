"""The per-layer grid as plain data: rows, columns, the values the merge will use, and the edits.

Rows are the output stack: embeddings, every output layer, final norm/head. Columns are the method's
float parameters (per-model ones once per model, shared ones once), each either whole or split by
filter into attention / mlp / rest. A cell's value is never computed here: it is the core's
resolution (`mergetui.recipe.resolve`) for a representative tensor of that row and group, so the grid
shows exactly what the merge will use. Edits write back to the recipe through the document, one undo
step each, in the forms `recipe_values` describes; columns nobody edits keep whatever form they had.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mergetui.editing import recipe_values
from mergetui.editing.cells import (
    ALL,
    ATTENTION,
    GROUP_LABELS,
    MLP,
    NA,
    REST,
    SPLIT_GROUPS,
    CellValue,
    GridColumn,
    GridRow,
    as_cell,
    format_number,
    param_scale,
    round_value,
)
from mergetui.editing.document import RecipeDocument
from mergetui.editing.operations import DEFAULT_STEP, SelectionOperations
from mergetui.editing.overlay import MetricOverlay
from mergetui.editing.suggest import MetricSuggestions
from mergetui.editing.tensor_names import LLAMA_NAMES, TensorNames
from mergetui.errors import UserError
from mergetui.merge.analysis import Analysis, GroupMetrics, format_metric
from mergetui.recipe.methods import METHODS, ParamSpec
from mergetui.recipe.model import Recipe, Slice

DEFAULT_ASSUMED_LAYERS = 32


class GridModel(SelectionOperations, MetricOverlay, MetricSuggestions):
    """Rows, columns and values of the grid for a document's recipe, and every edit on them.

    The operations over a selection (`operations`), the metric overlay (`overlay`) and the suggest
    rule (`suggest`) are mixed in from their own modules; all of them write through `apply`.
    """

    def __init__(
        self,
        document: RecipeDocument,
        *,
        layer_counts: Mapping[str, int] | None = None,
        assumed_layers: int | None = None,
        names: TensorNames | None = None,
        split: bool = False,
        step: float = DEFAULT_STEP,
    ) -> None:
        self.document = document
        self.layer_counts: dict[str, int] = dict(layer_counts or {})
        self.assumed_layers = assumed_layers
        self.names = names or LLAMA_NAMES
        self.split = split
        self.step = step
        self.rows: list[GridRow] = []
        self.columns: list[GridColumn] = []
        self.problem: str | None = None  # why there is no grid, if there is none
        self.layer_note: str | None = None  # how the layer count was found, when it is a guess
        self._values: dict[tuple[int, int], CellValue] = {}
        self._slices: list[Slice] = []
        self._ranges: dict[str, tuple[float, float]] = {}
        # The metric overlay: the analysis the metric columns show, and which metric (None: off).
        self.insight: Analysis | None = None
        self.metric: str | None = None
        self._groups: dict[tuple[Any, str], GroupMetrics | None] = {}
        self.rebuild()

    @property
    def recipe(self) -> Recipe:
        return self.document.recipe

    # -- building ------------------------------------------------------------------------------

    def model_layers(self) -> tuple[int, str | None]:
        """Layer count of the models in the `models` form, and a note when it is not measured."""
        known = [self.layer_counts[m] for m in self.recipe.models if m in self.layer_counts]
        if known:
            return max(known), None
        if self.assumed_layers:
            return (
                self.assumed_layers,
                f"{self.assumed_layers} layers, set by hand (checkpoints not found)",
            )
        # A saved grid column is as long as the stack; shorter lists are gradient anchors.
        guess = max(recipe_values.guess_layer_count(self.recipe) or 0, DEFAULT_ASSUMED_LAYERS)
        return guess, (f"checkpoints not found: assuming {guess} layers (ctrl+p › Set layer count)")

    def rebuild(self) -> None:
        """Recompute rows, columns and values from the recipe (after any change to it)."""
        self._ranges = {}
        self.problem = None
        self.layer_note = None
        spec = METHODS.get(self.recipe.method)
        if spec is None:
            self._clear(f"unknown method {self.recipe.method!r}: pick one on the Setup tab")
            return
        if not self.recipe.models:
            self._clear("no models yet: add some on the Setup tab")
            return
        self._counts: dict[str, int] = {}
        if self.recipe.slices is not None:
            slices = self.recipe.slices
            if not slices or any(not s.sources for s in slices):
                self._clear("a slice has no sources: fix it on the Slices tab")
                return
        else:
            count, self.layer_note = self.model_layers()
            self._counts = {name: count for name in self.recipe.models}
            slices = self.recipe.effective_slices(self._counts)
        self._slices = slices
        self.rows = self._build_rows(slices)
        whole = self._build_columns(spec)
        if not whole:
            self.columns, self._values = [], {}
            self.problem = f"{spec.pretty_name} has no per-layer parameters: nothing to shape here"
            return
        self._resolve_series(spec, whole)
        self.columns = [self._with_errors(c) for c in self._split_columns(whole)]
        self.columns = self._with_metric_columns(self.columns)
        self._values = {
            (r, c): self._cell(r, column)
            for c, column in enumerate(self.columns)
            for r in range(len(self.rows))
        }

    def _clear(self, problem: str) -> None:
        self.rows, self.columns, self._values, self._slices = [], [], {}, []
        self._series = {}
        self.problem = problem

    def _build_rows(self, slices: Sequence[Slice]) -> list[GridRow]:
        rows = [GridRow("embed", 0)]
        layer = 0
        for index, slice_ in enumerate(slices):
            length = slice_.num_layers
            for local in range(length):
                sources = tuple((s.model, s.layer_range[0] + local) for s in slice_.sources)
                rows.append(GridRow("layer", index, layer, local, length, sources))
                layer += 1
        rows.append(GridRow("head", len(slices) - 1))
        return rows

    def grid_params(self, spec: Any) -> list[ParamSpec]:
        """The parameters that get columns: every float one (per-model first, as in the spec)."""
        return [p for p in spec.per_model_params if p.type == "float"] + [
            p for p in spec.shared_params if p.type == "float"
        ]

    def _build_columns(self, spec: Any) -> list[GridColumn]:
        columns: list[GridColumn] = []
        for param in self.grid_params(spec):
            models: list[str | None] = (
                recipe_values.column_models(self.recipe, param) if param.per_model else [None]
            )
            for model in models:
                columns.append(
                    GridColumn(
                        param.name,
                        model,
                        ALL,
                        recipe_values.read_only_reason(self.recipe, self.names, param.name, model),
                    )
                )
        return columns

    def _split_columns(self, columns: list[GridColumn]) -> list[GridColumn]:
        """Split a column into attention / mlp / rest when asked to, or when its groups differ."""
        out: list[GridColumn] = []
        for column in columns:
            if self.split or self._groups_differ(column.key):
                out.extend(
                    GridColumn(column.param, column.model, g, column.read_only)
                    for g in SPLIT_GROUPS
                )
            else:
                out.append(column)
        return out

    def _groups_differ(self, key: tuple[str, str | None]) -> bool:
        series = [self._series.get((key, g)) for g in SPLIT_GROUPS]
        layer_rows = [r for r, row in enumerate(self.rows) if row.kind == "layer"]
        return any(len({repr(s[r]) if s else None for s in series}) > 1 for r in layer_rows)

    def _with_errors(self, column: GridColumn) -> GridColumn:
        error = self._errors.get(column.key)
        if error and not column.read_only:
            return GridColumn(column.param, column.model, column.group, error)
        return column

    # -- resolution (the core's) ---------------------------------------------------------------

    def _resolve_series(self, spec: Any, columns: list[GridColumn]) -> None:
        """Ask the core for every (parameter, model, group) down the whole stack."""
        from mergetui.recipe import resolve

        self._series: dict[tuple[tuple[str, str | None], str], list[CellValue]] = {}
        self._errors: dict[tuple[str, str | None], str] = {}
        for column in columns:
            # Without filter entries every group resolves alike: ask once, share the answer.
            sources = recipe_values.value_sources(self.recipe, column.param, column.model)
            filtered = any(recipe_values.conditionals(v) for v in sources)
            for group in SPLIT_GROUPS:
                if not filtered and group != SPLIT_GROUPS[0]:
                    self._series[(column.key, group)] = self._series[(column.key, SPLIT_GROUPS[0])]
                    continue
                try:
                    found = resolve.resolve_layer_values(
                        self.recipe,
                        self._counts,
                        column.param,
                        column.model,
                        self.names.template(group),
                        pre_tensor=self.names.embed,
                        post_tensor=self.names.head,
                    )
                except UserError as exc:
                    self._errors[column.key] = f"cannot show {column.title}: {exc}"
                    self._series[(column.key, group)] = [None] * len(self.rows)
                    continue
                series = [
                    as_cell(found.embed),
                    *(as_cell(v) for v in found.layers),
                    as_cell(found.head),
                ]
                self._series[(column.key, group)] = [
                    NA if not self._applies(row, column) else value
                    for row, value in zip(self.rows, series, strict=True)
                ]

    def _applies(self, row: GridRow, column: GridColumn) -> bool:
        """Whether the merge uses this column's parameter at this row at all."""
        if column.model is None:
            return True
        slice_ = self._slices[row.slice_index]
        if all(source.model != column.model for source in slice_.sources):
            return False
        spec = METHODS[self.recipe.method].param(column.param)
        base = slice_.base or self.recipe.base
        return not (spec is not None and spec.scope == "non_base" and column.model == base)

    def _cell(self, r: int, column: GridColumn) -> CellValue:
        row = self.rows[r]
        if row.kind != "layer" and column.group in (ATTENTION, MLP):
            return NA
        if column.metric:
            return self._metric_cell(row, column)
        group = REST if column.group == ALL else column.group
        return self._series[(column.key, group)][r]

    # -- reading -------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.columns)

    def value(self, row: int, col: int) -> CellValue:
        return self._values.get((row, col), NA)

    def spec_of(self, col: int) -> ParamSpec:
        spec = METHODS[self.recipe.method].param(self.columns[col].param)
        assert spec is not None
        return spec

    def editable(self, row: int, col: int) -> bool:
        return (
            self.rows[row].kind == "layer"
            and self.columns[col].read_only is None
            and self.value(row, col) is not NA
        )

    def why_not_editable(self, row: int, col: int) -> str | None:
        if self.editable(row, col):
            return None
        kind = self.rows[row].kind
        column = self.columns[col]
        if column.read_only:
            return column.read_only
        if kind == "embed":
            return "embeddings follow the first layer's value (mergekit resolves them at t = 0)"
        if kind == "head":
            return "final norm and head follow the first layer of the last slice (t = 0)"
        return f"{column.model} is not an input of this slice"

    def text(self, row: int, col: int) -> str:
        value = self.value(row, col)
        if value is NA:
            return "·"
        if self.columns[col].metric:
            return format_metric(self.columns[col].param, value)
        if value is None:
            return "?" if self.spec_of(col).required else "—"
        return format_number(value)

    def param_range(self, param: str) -> tuple[float, float]:
        """The heat map's scale for a parameter (`cells.param_scale` over its values), cached."""
        cached = self._ranges.get(param)
        if cached is None:
            cached = self._ranges[param] = self._param_range(param)
        return cached

    def _param_range(self, param: str) -> tuple[float, float]:
        numbers = [
            v
            for (r, c), v in self._values.items()
            if self.columns[c].param == param and isinstance(v, float)
        ]
        return param_scale(METHODS[self.recipe.method].param(param), numbers)

    def heat(self, row: int, col: int) -> float | None:
        """Where the cell sits in its parameter's range, 0..1; None when it has no number."""
        value = self.value(row, col)
        if value is NA or value is None:
            return None
        column = self.columns[col]
        if column.metric:
            # Hot where the models part ways: low cosine or agreement, high distance.
            low, high = self.metric_range(column.param)
            if not math.isfinite(value):
                return 1.0
            where = (value - low) / (high - low) if high > low else 0.0
            return where if column.param == "distance" else 1.0 - where
        low, high = self.param_range(column.param)
        return (value - low) / (high - low) if high > low else 0.5

    def column_values(self, col: int) -> list[float | None]:
        """The column over the layer rows (for the curve preview)."""
        out: list[float | None] = []
        for r, row in enumerate(self.rows):
            if row.kind == "layer":
                value = self.value(r, col)
                out.append(None if value is NA else value)
        return out

    def row_label(self, row: int) -> str:
        item = self.rows[row]
        if item.kind == "embed":
            return "embed"
        if item.kind == "head":
            return "head"
        if self.recipe.slices is not None and len(item.sources) == 1:
            model, source_layer = item.sources[0]
            return f"{item.layer} {model[:5]}:{source_layer}"
        return str(item.layer)

    def describe(self, row: int, col: int) -> str:
        """One line about a cell for the status bar: what it is and its exact value."""
        column = self.columns[col]
        where = self.row_label(row)
        group = f" ({GROUP_LABELS[column.group]})" if column.group != ALL else ""
        value = self.value(row, col)
        if value is NA:
            shown = "n/a"
        elif column.metric:
            reference = self.insight.reference if self.insight is not None else "?"
            shown = f"{format_metric(column.param, value)} (against {reference})"
        elif value is None:
            shown = "no value" + (" (required)" if self.spec_of(col).required else "")
        else:
            shown = format_number(value, precise=True)
        return f"{column.title}{group} @ {where} = {shown}"

    def layer_rows(self, rows: Iterable[int]) -> list[int]:
        return [r for r in rows if 0 <= r < len(self.rows) and self.rows[r].kind == "layer"]

    def toggle_split(self) -> bool:
        """Show every column split into attention / mlp / rest, or not; returns the new state."""
        self.split = not self.split
        self.rebuild()
        return self.split

    def mixed_columns(self) -> list[str]:
        """Columns shown split because their groups differ (they stay split with the toggle off)."""
        titles: list[str] = []
        for column in self.columns:
            if column.metric:
                continue
            if column.group == ATTENTION and column.title not in titles:
                titles.append(column.title)
        return titles if not self.split else []

    # -- editing -------------------------------------------------------------------------------

    def _clamp(self, col: int, value: float) -> float:
        spec = self.spec_of(col)
        if spec.minimum is not None:
            value = max(float(spec.minimum), value)
        if spec.maximum is not None:
            value = min(float(spec.maximum), value)
        return round_value(value)

    def apply(self, changes: Mapping[tuple[int, int], float], label: str) -> int:
        """Write new values for cells; returns how many cells changed. One undo step."""
        edits = {
            cell: self._clamp(cell[1], float(v))
            for cell, v in changes.items()
            if self.editable(*cell) and math.isfinite(float(v))
        }
        edits = {cell: v for cell, v in edits.items() if self.value(*cell) != v}
        if not edits:
            return 0
        touched: dict[tuple[tuple[str, str | None], int], dict[tuple[int, str], float]] = {}
        for (r, c), v in edits.items():
            column = self.columns[c]
            groups = SPLIT_GROUPS if column.group == ALL else (column.group,)
            segment = touched.setdefault((column.key, self.rows[r].slice_index), {})
            for group in groups:
                segment[(r, group)] = v
        with self.document.edit(label):
            for (key, slice_index), segment in touched.items():
                self._write_segment(key, slice_index, segment)
        self.rebuild()
        return len(edits)

    def _write_segment(
        self, key: tuple[str, str | None], slice_index: int, edits: Mapping[tuple[int, str], float]
    ) -> None:
        """Write one column over one slice as explicit per-layer lists (split when its groups differ)."""
        rows = [
            r
            for r, row in enumerate(self.rows)
            if row.kind == "layer" and row.slice_index == slice_index
        ]
        lists: dict[str, list[float | None]] = {}
        for group in SPLIT_GROUPS:
            series = self._series[(key, group)]
            current = [edits.get((r, group), series[r]) for r in rows]
            current = [None if v is NA else v for v in current]
            filled = recipe_values.fill_gaps(current)
            lists[group] = [None if v is None else round_value(v) for v in filled]
        filters = recipe_values.write_filters(self.recipe, self.names, key)
        value = recipe_values.column_value(lists, filters)
        if value is not None:
            recipe_values.target_parameters(self.recipe, key, slice_index)[key[0]] = value
