"""What the Search screen's form holds, and the `[search]` table it makes: plain data, no Textual.

The form starts from the open recipe's own `[search]` table when it has one (the demo's
`evolve.toml` does); otherwise from defaults: the method's tuned parameter, 4 layer groups, smooth,
a budget of 48, seed 0, and the demo's calibration texts when they lie beside the recipe. What the
form does not show (bounds, population, objectives of other kinds than perplexity, their weights)
is kept from the recipe's table as it was. Every check of the values is the core's
(`mergetui.search.spec.search_spec_from_recipe`), made before anything is loaded.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.recipe.model import Recipe

DEFAULT_GROUPS = 4
DEFAULT_BUDGET = 48
DEFAULT_SEED = 0
# Where `mergetui demo` writes its held-out texts: DIR/calib/*.txt, its recipes in DIR or DIR/recipes.
CALIBRATION_FOLDER = "calib"
PERPLEXITY = "perplexity"


@dataclass
class SearchSettings:
    """The form's values. `texts` are perplexity objectives, as written in the table (relative to
    the recipe's folder); `table` is the recipe's own `[search]` table, kept for what the form
    does not show."""

    choices: tuple[str, ...]  # the parameters the method lets a search set
    parameters: tuple[str, ...]
    layer_groups: int = DEFAULT_GROUPS
    smooth: bool = True
    texts: tuple[str, ...] = ()
    budget: int = DEFAULT_BUDGET
    seed: int = DEFAULT_SEED
    table: dict[str, Any] = field(default_factory=dict)


def searchable_parameters(method: str) -> tuple[str, ...]:
    """The parameters of `method` a search may set, in the method's order: its numbers (the
    rule `mergetui.search.spec` checks `search.parameters` by)."""
    from mergetui.recipe.methods import METHODS

    spec = METHODS.get(method)
    return spec.searchable_params if spec else ()


def demo_texts(recipe_dir: Path) -> tuple[str, ...]:
    """The demo's calibration texts (calib/*.txt in the recipe's folder or the one above it), as
    paths relative to the recipe's folder; none when there are none."""
    for folder in (recipe_dir, recipe_dir.parent):
        calib = folder / CALIBRATION_FOLDER
        if calib.is_dir():
            texts = sorted(p for p in calib.glob("*.txt") if p.is_file())
            if texts:
                return tuple(Path(os.path.relpath(p, recipe_dir)).as_posix() for p in texts)
    return ()


def settings_for(recipe: Recipe, recipe_dir: Path) -> SearchSettings:
    """The form's first values for `recipe`: from its `[search]` table, else the defaults."""
    from mergetui.recipe.methods import METHODS

    choices = searchable_parameters(recipe.method)
    table = copy.deepcopy(recipe.search) if isinstance(recipe.search, dict) else {}
    tuned = METHODS[recipe.method].tuned_parameter if recipe.method in METHODS else None
    default = (tuned,) if tuned in choices else choices[:1]
    written = table.get("parameters")
    parameters = tuple(p for p in written if p in choices) if isinstance(written, list) else ()
    objectives = [o for o in _objectives(table) if o.get("kind", PERPLEXITY) == PERPLEXITY]
    texts = tuple(str(o["text"]) for o in objectives if isinstance(o.get("text"), str))
    return SearchSettings(
        choices=choices,
        parameters=parameters or default,
        layer_groups=_whole(table.get("layer_groups"), DEFAULT_GROUPS),
        smooth=table["smooth"] if isinstance(table.get("smooth"), bool) else True,
        texts=texts if "objective" in table else demo_texts(recipe_dir),
        budget=_whole(table.get("budget"), DEFAULT_BUDGET),
        seed=_whole(table.get("seed"), DEFAULT_SEED),
        table=table,
    )


def search_table(settings: SearchSettings) -> dict[str, Any]:
    """The `[search]` table for the core: the recipe's own, with the form's values written over it.

    A text that the recipe's table named keeps its weight there; objectives of other kinds
    (completions, lm_eval) are kept as they were.
    """
    table = copy.deepcopy(settings.table)
    weights = {
        str(o.get("text")): o.get("weight")
        for o in _objectives(table)
        if o.get("kind", PERPLEXITY) == PERPLEXITY
    }
    others = [o for o in _objectives(table) if o.get("kind", PERPLEXITY) != PERPLEXITY]
    texts = []
    for text in settings.texts:
        objective: dict[str, Any] = {"kind": PERPLEXITY, "text": text}
        if weights.get(text) is not None:
            objective["weight"] = weights[text]
        texts.append(objective)
    table.update(
        parameters=list(settings.parameters),
        layer_groups=settings.layer_groups,
        smooth=settings.smooth,
        budget=settings.budget,
        seed=settings.seed,
        objective=[*texts, *others],
    )
    return table


def other_objectives(settings: SearchSettings) -> list[str]:
    """The recipe's objectives the form does not show (not perplexity), by kind, for a hint."""
    return [
        str(o.get("kind"))
        for o in _objectives(settings.table)
        if o.get("kind", PERPLEXITY) != PERPLEXITY
    ]


def _objectives(table: dict[str, Any]) -> list[dict[str, Any]]:
    found = table.get("objective")
    if isinstance(found, dict):
        found = [found]
    return [o for o in found if isinstance(o, dict)] if isinstance(found, list) else []


def _whole(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
