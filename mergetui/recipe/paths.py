"""Where the paths written in a recipe point: one rule, used by the merge, the app, the model card,
the history and the validator alike.

Every path written *in* a recipe (a model source that is a local folder, `output`) is relative to the
folder of the recipe file. A recipe with no file yet (untitled, in the app) starts from the working
folder, which is the folder the app was started in (mergetui never changes it while the app runs).
A path given on the command line (`--out`, the RECIPE argument) is relative to the working folder,
as for any command-line argument.

One fallback, for mergekit YAML configs: mergekit reads relative model paths from the working folder,
so a model source that is not beside the recipe is also looked for there. `output` has no fallback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe


def recipe_folder(recipe_file: str | Path | None) -> Path:
    """The absolute folder a recipe's relative paths start from: its file's folder, or the working
    folder for a recipe with no file."""
    if recipe_file is None or str(recipe_file) == "":
        return Path(os.path.abspath(os.getcwd()))
    return Path(os.path.abspath(os.path.expanduser(str(recipe_file)))).parent


def folder_of(recipe: Recipe, recipe_dir: str | Path | None = None) -> Path:
    """The folder `recipe`'s paths start from: `recipe_dir` when the caller knows it, else the
    folder of the file the recipe was read from (`Recipe.source_path`), else the working folder."""
    if recipe_dir is not None:
        return Path(os.path.abspath(os.path.expanduser(str(recipe_dir))))
    return recipe_folder(recipe.source_path)


def recipe_path(value: str | Path, folder: str | Path) -> Path:
    """The absolute location of a path written in a recipe whose paths start from `folder`
    (`~` expanded; `..` folded the way the OS reads it from an absolute path)."""
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        path = Path(folder) / path
    return Path(os.path.abspath(path))


def cli_path(value: str | Path) -> Path:
    """The absolute location of a path given on the command line (relative to the working folder)."""
    return Path(os.path.abspath(os.path.expanduser(str(value))))


def output_folder(recipe: Recipe, folder: str | Path, out: str | Path | None = None) -> Path | None:
    """Where a merge of `recipe` writes: `out` (a command-line path) when given, else the recipe's
    `output` read from `folder`; None when neither is set."""
    if out is not None and str(out) != "":
        return cli_path(out)
    if not recipe.output:
        return None
    return recipe_path(recipe.output, folder)


def local_model_path(source: str, folder: str | Path) -> Path:
    """Where a model source lies if it is a local path: beside the recipe (the rule), or relative to
    the working folder when it is only there (mergekit's rule, kept so its YAML configs run as they
    are). Whether anything is there is for the caller to check."""
    beside = recipe_path(source, folder)
    if beside.exists() or Path(os.path.expanduser(source)).is_absolute():
        return beside
    fallback = cli_path(source)
    return fallback if fallback.is_dir() else beside


def rebase_paths(
    recipe: Recipe, source_dir: str | Path, target_dir: str | Path
) -> list[tuple[str, str, str]]:
    """Rewrite the recipe's relative paths (local model folders, `output`) so that, written into a
    file in `target_dir`, they name the same places they named from `source_dir`: a recipe saved or
    converted into another folder keeps its meaning. Returns (what, old, new) for each rewrite.

    A relative source counts as a local folder when it exists under `source_dir` or cannot be a
    Hub id; Hub ids are left alone.
    """
    from mergetui.checkpoints.locate import looks_like_hub_id

    source_dir = Path(os.path.abspath(os.path.expanduser(str(source_dir))))
    target_dir = Path(os.path.abspath(os.path.expanduser(str(target_dir))))
    if source_dir == target_dir:
        return []

    def moved(value: str) -> str:
        return Path(os.path.relpath(recipe_path(value, source_dir), target_dir)).as_posix()

    def relative(value: str | None) -> bool:
        return bool(value) and not Path(os.path.expanduser(str(value))).is_absolute()

    def local(value: str | None) -> bool:
        return relative(value) and not (
            looks_like_hub_id(str(value)) and not (source_dir / str(value)).exists()
        )

    changes: list[tuple[str, str, str]] = []
    for name, entry in recipe.models.items():
        source = entry.source
        if local(source) and moved(source) != source:
            changes.append((f"model {name}", source, moved(source)))
            entry.source = moved(source)
        lora = entry.lora
        if lora is not None and local(lora) and moved(lora) != lora:
            changes.append((f"model {name}'s adapter", lora, moved(lora)))
            entry.lora = moved(lora)
    if relative(recipe.output):
        new = moved(recipe.output)
        if new != recipe.output:
            changes.append(("output", recipe.output, new))
            recipe.output = new
    return changes


def locate_adapter(lora: str, folder: str | Path | None) -> tuple[Path, bool] | None:
    """Where a model's `lora` adapter is on this machine, by the rule models follow (a folder
    beside the recipe or from the working folder, else the Hugging Face cache; `@revision` picks a
    cached revision); None when it is nowhere here."""
    path, _, revision = lora.partition("@")
    return locate_model(path, revision or None, folder)


def locate_model(
    source: str, revision: str | None, folder: str | Path | None
) -> tuple[Path, bool] | None:
    """Where a model source is on this machine, as (folder, is_local_path): a local folder by the
    rule (`local_model_path`; from the working folder when `folder` is None), else a snapshot in
    the Hugging Face cache; None when it is nowhere here. Nothing is downloaded."""
    from mergetui.checkpoints.locate import find_local

    candidate = local_model_path(source, folder if folder is not None else Path.cwd())
    if candidate.is_dir():
        return candidate.resolve(), True
    found = find_local(source, revision)
    if found is not None:
        return Path(found), False
    return None
