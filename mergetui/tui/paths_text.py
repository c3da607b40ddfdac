"""Paths as the screens show and read them: short, spelled the way a person would type them, and
read from the open recipe's folder.

One home for these rules, shared by the Run screen (output, history) and the Chat screen (the load
dialog's candidates, the recipe's models), so neither screen imports the other for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def short_path(path: str | Path) -> str:
    """A path relative to the working folder when it is inside it (what a person typed), else
    from the home folder (`~/...`), else as given."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        home = Path.home()
        try:
            return "~/" + str(Path(path).relative_to(home))
        except ValueError:
            return str(path)


def document_folder(document: Any) -> Path:
    """The folder the open recipe's relative paths (models, output) are read from: its file's
    (or, for a recipe reopened from the history, its origin's), else the working folder."""
    from mergetui.recipe.paths import recipe_folder

    return recipe_folder(document.path or document.origin)
