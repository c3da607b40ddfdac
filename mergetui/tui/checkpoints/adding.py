"""A listed checkpoint into the recipe, as a model or as its base: one undoable document edit.

No Textual here: the screen says what happened; this only decides the name and makes the edit.
"""

from __future__ import annotations

from typing import Any

from mergetui.checkpoints.sources import CheckpointRow


def model_named(recipe: Any, row: CheckpointRow) -> str | None:
    """The name the recipe already gives this checkpoint (same source and revision; for an
    adapter, a model carrying it), if any."""
    if row.adapter is not None:
        lora = f"{row.source}@{row.revision}" if row.revision else row.source
        return next((n for n, e in recipe.models.items() if e.lora == lora), None)
    return next(
        (
            name
            for name, entry in recipe.models.items()
            if entry.source == row.source and entry.revision == row.revision
        ),
        None,
    )


def add_checkpoint(document: Any, row: CheckpointRow, as_base: bool) -> str:
    """Add `row` (unless the recipe has it) and make it the base when asked, or when the method
    needs a base and the recipe has none; returns its name in the recipe. ctrl+z undoes it."""
    from mergetui.recipe.methods import METHODS
    from mergetui.recipe.model import ModelEntry
    from mergetui.tui.dialogs.models import suggest_model_name

    recipe = document.recipe
    existing = model_named(recipe, row)
    name = existing or suggest_model_name(row.source, set(recipe.models))
    with document.edit(f"base {name}" if as_base else f"add model {name}"):
        if existing is None and row.adapter is not None and row.adapter.get("base_model"):
            # an adapter: a model of the base it was trained on, carrying it
            lora = f"{row.source}@{row.revision}" if row.revision else row.source
            recipe.models[name] = ModelEntry(name, row.adapter["base_model"], lora=lora)
        elif existing is None:
            recipe.models[name] = ModelEntry(name, row.source, revision=row.revision)
        spec = METHODS.get(recipe.method)
        if as_base:
            recipe.base = name
        elif recipe.base is None and spec is not None and spec.base == "required":
            recipe.base = name
    return name
