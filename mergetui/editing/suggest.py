"""Suggest from the metrics: where the models disagree most, lean toward the one that moved less.

The rule (docs/insight.md): d = 1 - sign agreement (1 - cosine for one compared model), rescaled to
0..1 over the layers; each tuned cell v becomes v + s·d·(g - v). The tuned parameter is the method's
`tuned_parameter`: a shared one (slerp's t) has goal g = 0, the base; a per-model one (weights) has
the layer's total weight shared by 1/distance from the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mergetui.editing.cells import ALL, GridError, GridRow, Group, analysis_kinds
from mergetui.merge.analysis import Analysis, GroupMetrics
from mergetui.recipe.methods import METHODS, ParamSpec

if TYPE_CHECKING:
    from mergetui.editing.layer_table import GridModel

SUGGEST_STRENGTH = 0.5

Context = tuple[int, Group]  # (row, group): a layer as a whole or one group of it


def tuned_param(method: str) -> ParamSpec | None:
    """The parameter suggest shapes for `method` (its spec's `tuned_parameter`), if any."""
    spec = METHODS.get(method)
    if spec is None or spec.tuned_parameter is None:
        return None
    return spec.param(spec.tuned_parameter)


def suggest_rule_lines(method: str, reference: str) -> list[str]:
    """The rule in three short lines, as the preview shows it for this method."""
    tuned = tuned_param(method)
    goal = (
        f"g = 0: {tuned.name} leans toward the base ({reference}), which moved 0 from itself"
        if tuned is not None and not tuned.per_model
        else "g = the layer's total weight shared by 1/distance (distance 0 takes all)"
    )
    return [
        f"Where the models disagree most, lean toward the one that moved less from {reference}.",
        "d = 1 - sign agreement (1 - cosine for one model), rescaled to 0..1 over the "
        "layers; v becomes v + s·d·(g - v)",
        goal,
    ]


@dataclass
class Suggestion:
    """Proposed cell values (not yet written) and what they came from."""

    changes: dict[tuple[int, int], float]
    strength: float
    disagreement: dict[tuple[int, str], float]  # (row, group) -> raw disagreement
    columns: list[int]

    @property
    def empty(self) -> bool:
        return not self.changes


class MetricSuggestions:
    """`GridModel.suggest` and `apply_suggestion` (a mixin: it reads the table's cells and writes
    through its `apply`)."""

    def suggest(
        self: GridModel, insight: Analysis, strength: float = SUGGEST_STRENGTH
    ) -> Suggestion:
        """Proposed values from the metrics by the rule above; nothing is written (see `apply`).

        Each layer is looked at in *contexts*: the whole layer, plus attention / mlp / rest for
        the columns shown split. A column gets its proposal from its own context; a whole-layer
        column takes part in the split contexts with its value, and a split model takes part in
        the whole-layer context with the mean of its group values.
        """
        if not 0 < strength <= 1:
            raise GridError("the strength of a suggestion is above 0 and at most 1")
        tuned, targets = _targets(self, insight)
        raw, contexts = _disagreements(self, insight, targets)
        low, high = min(raw.values()), max(raw.values())
        spread = {key: (v - low) / (high - low) if high > low else 0.0 for key, v in raw.items()}
        changes: dict[tuple[int, int], float] = {}
        for (r, group), metrics in contexts.items():
            pull = strength * spread[(r, group)]
            if pull <= 0:
                continue
            written = [c for c in _tunable(self, r, targets) if self.columns[c].group == group]
            if tuned.per_model:
                goals = _weight_goals(self, insight, metrics, r, group, targets, written)
            else:
                goals = {c: 0.0 for c in written}  # 0 is the base, which moved 0 from itself
            for c, goal in goals.items():
                current = self.value(r, c)
                # Four significant digits: a proposal, not a measurement.
                proposed = self._clamp(c, float(f"{current + pull * (goal - current):.4g}"))
                if proposed != current:
                    changes[(r, c)] = proposed
        return Suggestion(
            changes=changes,
            strength=strength,
            disagreement=dict(raw),
            columns=sorted({c for _, c in changes}),
        )

    def apply_suggestion(self: GridModel, suggestion: Suggestion) -> int:
        """Write a confirmed suggestion: one undo step."""
        return self.apply(suggestion.changes, "suggest from metrics")


def _targets(table: GridModel, insight: Analysis) -> tuple[ParamSpec, list[int]]:
    """The tuned parameter and its columns; a shared one needs the base as the reference."""
    method = table.recipe.method
    tuned = tuned_param(method)
    targets = [
        c
        for c, col in enumerate(table.columns)
        if tuned is not None
        and not col.metric
        and col.param == tuned.name
        and (col.model is not None) == tuned.per_model
    ]
    if tuned is not None and not tuned.per_model:
        if table.recipe.base is None or insight.reference != table.recipe.base:
            raise GridError(
                f"{method} suggestions need the base ({tuned.name} = 0) as the reference"
            )
    if tuned is None or not targets:
        raise GridError(f"suggest shapes slerp's t or per-model weights; {method} has neither")
    return tuned, targets


def _tunable(table: GridModel, r: int, targets: list[int]) -> list[int]:
    """The target columns with a number to change at row `r`."""
    return [c for c in targets if table.editable(r, c) and isinstance(table.value(r, c), float)]


def _disagreements(
    table: GridModel, insight: Analysis, targets: list[int]
) -> tuple[dict[Context, float], dict[Context, GroupMetrics]]:
    """Raw disagreement and metrics of every context that has a cell to change."""
    single = None if insight.has_agreement else insight.others[0]
    raw: dict[Context, float] = {}
    contexts: dict[Context, GroupMetrics] = {}
    for r, row in enumerate(table.rows):
        if row.kind != "layer":
            continue
        cells = _tunable(table, r, targets)
        for group in dict.fromkeys(table.columns[c].group for c in cells):
            metrics = _context_metrics(insight, row, group)
            if metrics is None:
                continue
            if single is None:
                assert metrics.agreement is not None
                raw[(r, group)] = 1.0 - metrics.agreement
            else:
                raw[(r, group)] = 1.0 - metrics.cosine[single]
            contexts[(r, group)] = metrics
    if not raw:
        raise GridError("no layer has both a value to change and metrics to go by")
    return raw, contexts


def _context_metrics(insight: Analysis, row: GridRow, group: Group) -> GroupMetrics | None:
    layer = row.sources[0][1] if row.sources else row.layer
    return insight.group(layer, analysis_kinds(group))


def _weight_goals(
    table: GridModel,
    insight: Analysis,
    metrics: GroupMetrics,
    r: int,
    group: str,
    targets: list[int],
    written: list[int],
) -> dict[int, float]:
    """Goals for the `written` columns: each model's share of the context's total weight,
    inversely to how far it moved from the reference (distance 0 takes it all)."""
    weights: dict[str, float] = {}
    own: dict[str, int] = {}
    by_model: dict[str, list[int]] = {}
    for c in _tunable(table, r, targets):
        by_model.setdefault(str(table.columns[c].model), []).append(c)
    for model, columns in by_model.items():
        mine = [c for c in columns if table.columns[c].group == group]
        whole = [c for c in columns if table.columns[c].group == ALL]
        if mine:
            weights[model] = table.value(r, mine[0])
            own[model] = mine[0]
        elif whole:
            weights[model] = table.value(r, whole[0])
        else:  # a split model in the whole-layer context
            weights[model] = sum(table.value(r, c) for c in columns) / len(columns)
    distances = {
        m: 0.0 if m == insight.reference else metrics.distance[m]
        for m in weights
        if m == insight.reference or m in metrics.distance
    }
    if len(distances) < 2:
        return {}
    total = sum(weights[m] for m in distances)
    still = [m for m, d in distances.items() if d <= 0]
    if still:
        shares = {m: (1.0 / len(still) if m in still else 0.0) for m in distances}
    else:
        inverse = {m: 1.0 / d for m, d in distances.items() if math.isfinite(d)}
        norm = sum(inverse.values())
        shares = {m: inverse.get(m, 0.0) / norm for m in distances}
    return {c: total * shares[m] for m, c in own.items() if c in written and m in shares}
