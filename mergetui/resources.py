"""Files shipped with the package: bundled themes and sample recipes.

In the repository they live at the top level (`themes/`, `sample_recipes/`); the wheel carries them as
the packages `mergetui.themes` and `mergetui.sample_recipes`, so importlib.resources finds them in
both an installed wheel and an editable checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _package_dir(package: str, repo_folder: str) -> Path:
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / repo_folder


def themes_dir() -> Path:
    return _package_dir("mergetui.themes", "themes")


def sample_recipes_dir() -> Path:
    return _package_dir("mergetui.sample_recipes", "sample_recipes")
