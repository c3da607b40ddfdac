"""The map between CMA-ES's flat vector of numbers and a recipe with per-layer values.

Each searched series (a parameter for one model, or a shared parameter) has `layer_groups` values
along the depth. Smooth: they are the anchors of a gradient (mergetui's list of values, interpolated
between neighbours, as mergekit-evolve's `smooth`). Not smooth: each group's layers take its value
as it is (a per-layer list that steps from group to group, as mergekit-evolve's layer slices). One
group is one number for every layer. `recipe_for` writes the values into a copy of the template as
plain parameters, so the result is an ordinary recipe: `mergetui merge` runs it, the grid shows it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe
from mergetui.recipe.resolve import evaluate
from mergetui.search.spec import SearchSpec, start_setting


class Genome:
    """The searched values of `spec` for models of `layer_count` layers.

    `labels`, `x0`, `lower` and `upper` are parallel lists, series by series (in the spec's
    parameter order, then model order), each series group by group. `x0` is what the template
    recipe itself says at each group (clipped into the bounds).
    """

    def __init__(self, spec: SearchSpec, layer_count: int) -> None:
        if layer_count < 1:
            raise UserError("the models have no layers to search over", where=spec.where())
        if spec.layer_groups > layer_count:
            raise UserError(
                f"layer_groups is {spec.layer_groups} but the models have {layer_count} layers",
                where=spec.where("search.layer_groups"),
                fix=f"set layer_groups to at most {layer_count}",
            )
        self.spec = spec
        self.layer_count = layer_count
        self.groups = spec.layer_groups
        self.slots = spec.slots
        self.labels: list[str] = []
        self.x0: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        method = spec.method
        for name, model in self.slots:
            low, high = spec.bounds[name]
            setting = start_setting(spec.recipe, method, name, model)
            param = method.param(name)
            for group in range(self.groups):
                self.labels.append(f"{model}.{name}[{group}]" if model else f"{name}[{group}]")
                start = float(evaluate(setting, "", self.group_t(group), param))
                self.x0.append(min(max(start, low), high))
                self.lower.append(low)
                self.upper.append(high)

    def __len__(self) -> int:
        return len(self.labels)

    def group_t(self, group: int) -> float:
        """Where along the depth (0 first layer, 1 last) a group's value sits: the anchor of a
        smooth gradient, else the middle of the group's layers."""
        if self.spec.smooth and self.groups > 1:
            return group / (self.groups - 1)
        if self.layer_count == 1:
            return 0.0
        layers = [i for i in range(self.layer_count) if self.group_of(i) == group]
        return (layers[0] + layers[-1]) / 2 / (self.layer_count - 1)

    def group_of(self, layer: int) -> int:
        """The group a layer's value comes from, stepped (groups as even as the count allows)."""
        return layer * self.groups // self.layer_count

    def clip(self, values: Sequence[float]) -> list[float]:
        """`values` as floats within the bounds; ValueError for a wrong length or a NaN."""
        if len(values) != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} values, got {len(values)}")
        clipped = []
        for value, low, high in zip(values, self.lower, self.upper, strict=True):
            number = float(value)
            if math.isnan(number):
                raise ValueError("a searched value is NaN")
            clipped.append(min(max(number, low), high))
        return clipped

    def to_unit(self, values: Sequence[float]) -> list[float]:
        """Each value as a share of its bounds (0 low, 1 high): the space CMA-ES searches."""
        return [
            (v - low) / (high - low)
            for v, low, high in zip(self.clip(values), self.lower, self.upper, strict=True)
        ]

    def from_unit(self, unit: Sequence[float]) -> list[float]:
        """The values for shares of the bounds (clipped to [0, 1] first)."""
        return self.clip(
            [
                low + min(max(float(u), 0.0), 1.0) * (high - low)
                for u, low, high in zip(unit, self.lower, self.upper, strict=True)
            ]
        )

    def named(self, values: Sequence[float]) -> dict[str, float]:
        """label -> value, in genome order (what evaluations.jsonl records)."""
        return dict(zip(self.labels, self.clip(values), strict=True))

    def series(self, values: Sequence[float]) -> dict[tuple[str, str | None], list[float]]:
        """(parameter, model) -> its group values."""
        clipped = self.clip(values)
        return {
            slot: clipped[index * self.groups : (index + 1) * self.groups]
            for index, slot in enumerate(self.slots)
        }

    def setting(self, group_values: list[float]) -> Any:
        """One series as a recipe value: a number, a smooth gradient, or one value per layer."""
        if self.groups == 1:
            return group_values[0]
        if self.spec.smooth:
            return list(group_values)
        return [group_values[self.group_of(layer)] for layer in range(self.layer_count)]

    def recipe_for(self, values: Sequence[float]) -> Recipe:
        """A plain recipe (no search table) with `values` written as parameters: a model's own
        parameters for per-model ones, the recipe-wide ones for shared ones."""
        recipe = copy.deepcopy(self.spec.recipe)
        recipe.search = None
        recipe.locations = {}
        if recipe.seed is None and self.spec.method.random:
            # The evaluator merges a random method's candidates with the search's seed; written
            # down, `mergetui merge best.toml` makes the model that was scored.
            recipe.seed = self.spec.seed
        for (name, model), group_values in self.series(values).items():
            target = recipe.models[model].parameters if model else recipe.parameters
            target[name] = self.setting(group_values)
        return recipe
