"""The planner's models: where each one the recipe names is on this machine, opened (configs and
headers only), and the output folder the merge writes, kept apart from every input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.locate import looks_like_hub_id
from mergetui.errors import UserError
from mergetui.recipe.paths import locate_model, output_folder

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint
    from mergetui.recipe.model import Recipe


@dataclass(frozen=True)
class PlannedModel:
    """A model the merge reads: where it is and what it holds."""

    name: str
    source: str
    revision: str | None
    path: Path
    checkpoint: Checkpoint = field(repr=False)
    hub_id: str | None  # the Hub id, when the source is one
    local_source: Path | None  # the resolved folder when the source is a local path

    @property
    def num_layers(self) -> int:
        return self.checkpoint.num_layers

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint.config


def open_model(recipe: Recipe, name: str, recipe_dir: Path | None, allow_bin: bool) -> PlannedModel:
    from mergetui.checkpoints.inspect import open_checkpoint

    entry = recipe.models[name]
    resolved = locate_model(entry.source, entry.revision, recipe_dir)
    if resolved is None:
        hub = looks_like_hub_id(entry.source)
        raise UserError(
            f"model {name!r} ({entry.source}) is not on this machine"
            + (" (not a folder, and not in the Hugging Face cache)" if hub else ""),
            where=f"models.{name}.source",
            fix=(
                f"download it first (huggingface-cli download {entry.source}, or the app's "
                "Checkpoints screen)"
                if hub
                else "check the path; relative paths are read from the recipe's folder (then, "
                "as mergekit does, from the current directory)"
            ),
        )
    path, is_local = resolved
    checkpoint = open_checkpoint(path, allow_bin=allow_bin)
    return PlannedModel(
        name=name,
        source=entry.source,
        revision=entry.revision,
        path=path,
        checkpoint=checkpoint,
        hub_id=None if is_local else entry.source,
        local_source=path if is_local else None,
    )


def check_output_apart_from_inputs(output_dir: Path, models: Mapping[str, PlannedModel]) -> None:
    """Never write into, or replace, a folder the merge reads from."""
    target = output_dir.resolve()
    for model in models.values():
        source = model.path.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UserError(
                f"the output folder overlaps the input model {model.name!r} ({source})",
                where=str(output_dir),
                fix="choose an output folder outside every input model",
            )


def choose_output_dir(recipe: Recipe, recipe_dir: Path, out: str | Path | None) -> Path:
    """`out` (a command-line path) or the recipe's output; a recipe with neither cannot merge."""
    chosen = output_folder(recipe, recipe_dir, out)
    if chosen is None:
        raise UserError(
            "no output folder: the recipe has no `output` and none was given",
            where="merge.output",
            fix="pass --out DIR, or set output in the recipe's [merge] table",
        )
    return chosen
