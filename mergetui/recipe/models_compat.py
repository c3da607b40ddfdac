"""Can the models a recipe names be merged? Each is found the way a merge finds it, then compared.

A model is a folder by the recipe's path rule (`recipe.paths`), else a snapshot in the Hugging Face
cache, else (when the Hub may be asked) its headers on the Hub; `checkpoints.compat` compares them
with the recipe's base. The Checkpoints screen's check runs this before a merge would fail late.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.compat import CompatReport, compare_checkpoints
from mergetui.errors import UserError
from mergetui.recipe.paths import locate_model

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe


def open_model(source: str, revision: str | None, base_dir: Path | None, remote: bool) -> Any:
    """A local checkpoint for `source`, else (with `remote`) its headers read from the Hub."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.locate import looks_like_hub_id

    located = locate_model(source, revision, base_dir)
    if located is not None:
        return open_checkpoint(located[0])
    if remote and looks_like_hub_id(source):
        from mergetui.checkpoints.hub import read_remote_checkpoint

        return read_remote_checkpoint(source, revision)
    raise UserError(
        "not on this machine"
        + (" (and the Hub was not asked)" if looks_like_hub_id(source) else ""),
        where=source,
        fix="download it, or check the path",
    )


def check_recipe_models(
    recipe: Recipe, base_dir: Path | None = None, *, remote: bool = True
) -> CompatReport:
    """Compare the recipe's models with its base (or its first model)."""
    opened: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, entry in recipe.models.items():
        try:
            opened[name] = open_model(entry.source, entry.revision, base_dir, remote)
        except UserError as exc:
            skipped[name] = str(exc)
        except (OSError, ValueError) as exc:
            skipped[name] = f"{entry.source}: {exc}"
    reference = recipe.base if recipe.base in opened else (next(iter(opened), None))
    problems = compare_checkpoints(opened, reference)
    return CompatReport(reference, problems, list(opened), skipped)
