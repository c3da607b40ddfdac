"""Applying a search's best candidate to the open recipe: plain data, no Textual.

The app calls `apply_best` when the Search screen posts `ApplyBest`: the searched values (the
series `mergetui.search.spec.search_slots` names: a model's own parameter, or a recipe-wide one)
are copied from the best recipe into the document's, as one undo step. Nothing else changes, so
edits made to the recipe since the search started (its output, dtype, other parameters) stay.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.editing.document import RecipeDocument
    from mergetui.recipe.model import Recipe


def apply_best(
    document: RecipeDocument, best: Recipe, parameters: Sequence[str], label: str
) -> int:
    """Write `best`'s searched values into the document's recipe (one undo step named `label`);
    returns how many settings changed. UserError when the recipe no longer has the method or
    the models the search ran on."""
    from mergetui.recipe.methods import METHODS
    from mergetui.search.spec import search_slots

    recipe = document.recipe
    if recipe.method != best.method:
        raise UserError(
            f"the recipe's method is {recipe.method} now; the search ran on {best.method}",
            fix=f"set the method back to {best.method} (F3), or start a new search",
        )
    missing = [name for name in best.models if name not in recipe.models]
    if missing:
        raise UserError(
            f"the recipe no longer has model(s) {', '.join(missing)} that the search ran on",
            fix="add them back (F3), or start a new search on the recipe as it is",
        )
    slots = search_slots(best, METHODS[best.method], tuple(parameters))
    changed = 0
    with document.edit(label) as target:
        for name, model in slots:
            source = best.models[model].parameters if model else best.parameters
            if name not in source:
                continue
            into = target.models[model].parameters if model else target.parameters
            if into.get(name) != source[name]:
                into[name] = copy.deepcopy(source[name])
                changed += 1
    return changed
