"""The metric overlay: a checkpoint metric shown beside the parameter columns, where its columns
sit, which analysed layer a row's metric cell reads, and the scale its heat is drawn on.

The metrics come from `mergetui.merge.analysis`; these columns are read-only and only shown.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from mergetui.editing.cells import (
    ALL,
    NA,
    SPLIT_GROUPS,
    CellValue,
    GridColumn,
    GridRow,
    Group,
    analysis_kinds,
)
from mergetui.merge.analysis import METRIC_TITLES, PER_MODEL_METRICS, Analysis, GroupMetrics

if TYPE_CHECKING:
    from mergetui.editing.layer_table import GridModel


def compared_models(insight: Analysis | None, recipe_models: Collection[str]) -> list[str]:
    """Models that get a column for a per-model metric: the compared ones in the recipe."""
    if insight is None:
        return []
    return [m for m in insight.others if m in recipe_models or m == "output"]


def with_metric_columns(
    columns: list[GridColumn],
    metric: str,
    insight: Analysis,
    wanted: list[str],
    split: bool,
) -> list[GridColumn]:
    """Insert the overlay's columns: a per-model metric right after that model's column of
    the first per-model parameter (same split), agreement after all of that parameter's
    columns; models in `wanted` without such a column (and methods without one) at the end."""
    reason = f"{METRIC_TITLES[metric]} is a metric of the checkpoints (read-only; o hides it)"
    any_split = split or any(c.group != ALL for c in columns)
    end_groups: tuple[Group, ...] = SPLIT_GROUPS if any_split else (ALL,)

    def metric_columns(model: str | None, groups: Iterable[Group]) -> list[GridColumn]:
        return [GridColumn(metric, model, g, reason, metric=True) for g in groups]

    first = next((c.param for c in columns if c.model is not None), None)
    if metric not in PER_MODEL_METRICS:
        if not insight.has_agreement:
            return columns
        # One set for all the models, right after the first per-model parameter's columns.
        last = max((i for i, c in enumerate(columns) if c.param == first), default=None)
        if last is None:
            return columns + metric_columns(None, end_groups)
        return columns[: last + 1] + metric_columns(None, end_groups) + columns[last + 1 :]
    out: list[GridColumn] = []
    placed: set[str] = set()
    for index, column in enumerate(columns):
        out.append(column)
        following = columns[index + 1] if index + 1 < len(columns) else None
        if (
            column.param == first
            and column.model in wanted
            and (following is None or following.key != column.key)
        ):
            groups = [c.group for c in columns if c.key == column.key]
            out.extend(metric_columns(column.model, groups))
            placed.add(column.model)
    for model in wanted:
        if model not in placed:
            out.extend(metric_columns(model, end_groups))
    return out


def metric_key(row: GridRow, column: GridColumn, recipe_models: Collection[str]) -> Any:
    """What a row's metric cell reads: the layer the column's model comes from (the row's first
    source for agreement), "embed" or "head"; NA where the model is not an input of the row."""
    if row.kind in ("embed", "head"):
        return row.kind
    sources = dict(row.sources)
    if column.model is not None and column.model in recipe_models:
        return sources.get(column.model, NA)
    return row.sources[0][1] if row.sources else row.layer


class MetricOverlay:
    """The overlay state of `GridModel` (`insight`, `metric`) and its metric cells (a mixin: the
    table builds its columns through `_with_metric_columns` and reads cells through `_metric_cell`)."""

    @property
    def overlay(self: GridModel) -> bool:
        """Whether metric columns are shown (a metric is chosen and its analysis is known)."""
        return self.metric is not None and self.insight is not None

    def set_overlay(self: GridModel, insight: Analysis | None, metric: str | None) -> None:
        """Show `metric` of `insight` beside the parameters (None hides the overlay)."""
        self.insight = insight
        self.metric = metric
        self._groups = {}
        self.rebuild()

    def metric_models(self: GridModel) -> list[str]:
        """Models that get a column for a per-model metric: the compared ones in the recipe."""
        return compared_models(self.insight, self.recipe.models)

    def _with_metric_columns(self: GridModel, columns: list[GridColumn]) -> list[GridColumn]:
        if not self.overlay:
            return columns
        assert self.metric is not None and self.insight is not None
        wanted = self.metric_models()
        return with_metric_columns(columns, self.metric, self.insight, wanted, self.split)

    def _metric_group(self: GridModel, key: Any, group: Group) -> GroupMetrics | None:
        cached_key = (key, group)
        if cached_key not in self._groups:
            assert self.insight is not None
            kinds = analysis_kinds(group) if isinstance(key, int) else None
            self._groups[cached_key] = self.insight.group(key, kinds)
        return self._groups[cached_key]

    def _metric_cell(self: GridModel, row: GridRow, column: GridColumn) -> CellValue:
        """A metric for a row (see `metric_key`); NA where the analysis has nothing."""
        if self.insight is None:
            return NA
        key = metric_key(row, column, self.recipe.models)
        if key is NA:
            return NA
        metrics = self._metric_group(key, column.group)
        value = metrics.get(column.param, column.model) if metrics is not None else None
        return NA if value is None else float(value)

    def metric_range(self: GridModel, metric: str) -> tuple[float, float]:
        """The heat map's scale for a metric: its values over the layer rows."""
        cached = self._ranges.get("\0" + metric)
        if cached is None:
            numbers = [
                v
                for (r, c), v in self._values.items()
                if self.columns[c].metric
                and self.columns[c].param == metric
                and self.rows[r].kind == "layer"
                and isinstance(v, float)
                and math.isfinite(v)
            ]
            cached = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
            self._ranges["\0" + metric] = cached
        return cached
