"""Recipes and helpers the editing model's tests share: a grid for a recipe, its columns and rows."""

from __future__ import annotations

from mergetui.editing.cells import ALL
from mergetui.editing.document import RecipeDocument
from mergetui.editing.layer_table import GridModel
from mergetui.recipe.resolve import resolve_layer_values
from mergetui.recipe.toml_read import loads_toml

TIES = """
[merge]
method = "ties"
base = "base"

[models.base]
source = "/models/base"

[models.a]
source = "/models/a"

[models.a.parameters]
weight = [0.2, 0.8]
density = 0.5

[models.b]
source = "/models/b"

[models.b.parameters]
weight = 0.5
density = 0.7
"""

SLERP_FILTERS = """
[merge]
method = "slerp"
base = "a"

[models.a]
source = "/models/a"

[models.b]
source = "/models/b"

[parameters]
t = [
  { filter = "self_attn", value = [0, 1] },
  { filter = "mlp", value = [1, 0] },
  { value = 0.5 },
]
"""

STACK = """
[merge]
method = "passthrough"

[models.x]
source = "/models/x"

[models.y]
source = "/models/y"

[[slices]]
sources = [{ model = "x", layers = [0, 3] }]

[[slices]]
sources = [{ model = "y", layers = [1, 4] }]
"""


def model_for(text: str, layers: int = 5, **kwargs) -> GridModel:
    recipe = loads_toml(text)
    document = RecipeDocument(recipe)
    counts = {name: layers for name in recipe.models}
    return GridModel(document, layer_counts=counts, **kwargs)


def column(grid: GridModel, param: str, model: str | None, group: str = ALL) -> int:
    for index, item in enumerate(grid.columns):
        if (item.param, item.model, item.group) == (param, model, group):
            return index
    raise AssertionError(f"no column {param}/{model}/{group} in {grid.columns}")


def layer_row(grid: GridModel, layer: int) -> int:
    return next(r for r, row in enumerate(grid.rows) if row.layer == layer)


def layer_values(grid: GridModel, col: int) -> list:
    return [grid.value(r, col) for r, row in enumerate(grid.rows) if row.kind == "layer"]


def core_values(grid: GridModel, param: str, model: str | None, template: str) -> list:
    counts = {name: 5 for name in grid.recipe.models}
    found = resolve_layer_values(grid.recipe, counts, param, model, template)
    return found.layers
