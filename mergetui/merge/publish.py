"""Publishing a merged model on the Hub: its folder in one commit, its card naming its parents.

The Hub draws a model tree from `base_model` in the card's front matter. The card the merge wrote
has it; a folder whose card lacks it (replaced by hand, or made by mergekit) gets the Hub parents of
the recipe saved beside the weights. Reading that recipe is why this lives above the recipe layer:
`checkpoints.hub.push_folder` does the upload and takes the parents as they are given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergetui.errors import UserError
from mergetui.merge.output import MERGEKIT_FILE, RECIPE_FILE

# Where a merged folder keeps its recipe (mergetui's, an older name, mergekit's), first found wins.
RECIPE_FILES = (RECIPE_FILE, "recipe.toml", MERGEKIT_FILE)


def recipe_parents(folder: Path) -> list[str]:
    """Hub ids of the models named by the recipe saved in a merged folder (empty if none); an
    MoE's recipe copy names its base and experts."""
    from mergetui.checkpoints.locate import looks_like_hub_id

    for name in RECIPE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            sources = _recipe_sources(path)
        except (UserError, OSError, ValueError):
            continue
        return [
            source
            for source in sources
            if "/" in source and looks_like_hub_id(source) and not Path(source).exists()
        ]
    return []


def _recipe_sources(path: Path) -> list[str]:
    """The model sources a recipe file names, a merge recipe's or an MoE recipe's."""
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.moe import load_moe

    moe = load_moe(path)
    if moe is not None:
        return list(dict.fromkeys([moe.base] + [e.source for _, e in moe.all_experts()]))
    return [entry.source for entry in load_recipe(path).models.values()]


def push_merge(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    message: str | None = None,
    on_progress: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Upload a merged model's folder to `repo_id` (created if needed) in one commit; returns its
    URL. A card without `base_model` gets the parents from the folder's recipe."""
    from mergetui.checkpoints.hub import push_folder

    parents = recipe_parents(Path(folder).expanduser())
    return push_folder(
        folder,
        repo_id,
        parents=parents,
        private=private,
        message=message,
        on_progress=on_progress,
        cancel=cancel,
    )
