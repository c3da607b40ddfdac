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
    from mergetui.checkpoints.lora import Adapter
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
    adapter: Adapter | None = field(default=None, repr=False)  # its LoRA, applied as read
    adapter_warnings: tuple[str, ...] = ()  # e.g. the adapter names another base

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
    adapter, warnings = None, []
    if entry.lora is not None:
        adapter, warnings = open_model_adapter(
            name, entry.lora, checkpoint, entry.source, recipe_dir, allow_bin
        )
    return PlannedModel(
        name=name,
        source=entry.source,
        revision=entry.revision,
        path=path,
        checkpoint=checkpoint,
        hub_id=None if is_local else entry.source,
        local_source=path if is_local else None,
        adapter=adapter,
        adapter_warnings=tuple(warnings),
    )


def open_model_adapter(
    name: str,
    lora: str,
    checkpoint: Checkpoint,
    source: str,
    recipe_dir: Path | None,
    allow_bin: bool,
) -> tuple[Adapter, list[str]]:
    """Model `name`'s adapter, found as models are and checked against its base's headers
    (located at `models.NAME.lora`), with the warnings the check gave; a shape or architecture that
    does not fit is a UserError."""
    from mergetui.checkpoints.lora import check_adapter, open_adapter
    from mergetui.recipe.paths import locate_adapter

    where = f"models.{name}.lora"
    found = locate_adapter(lora, recipe_dir)
    if found is None:
        hub = looks_like_hub_id(lora.partition("@")[0])
        raise UserError(
            f"the adapter of model {name!r} ({lora}) is not on this machine",
            where=where,
            fix=f"download it first (mergetui pull {lora.partition('@')[0]})"
            if hub
            else "check the path; relative paths are read from the recipe's folder",
        )
    adapter = open_adapter(found[0], allow_bin=allow_bin, where=where)
    misfit, warnings = check_adapter(adapter, checkpoint, source)
    if misfit is not None:
        raise UserError(misfit.message, where=where, fix=misfit.fix)
    return adapter, warnings


def check_output_apart_from_inputs(output_dir: Path, models: Mapping[str, PlannedModel]) -> None:
    """Never write into, or replace, a folder the merge reads from."""
    target = output_dir.resolve()
    for model in models.values():
        folders = [model.path] + ([model.adapter.path] if model.adapter is not None else [])
        for folder in folders:
            _check_apart(target, output_dir, model.name, folder.resolve())


def _check_apart(target: Path, output_dir: Path, name: str, source: Path) -> None:
    if target == source or source in target.parents or target in source.parents:
        raise UserError(
            f"the output folder overlaps the input model {name!r} ({source})",
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
