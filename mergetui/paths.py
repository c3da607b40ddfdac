"""Where mergetui keeps its own files on this machine: one rule for every folder.

Each folder is the platform's (platformdirs, for the app name "mergetui"), unless its environment
variable is set (tests point them at temporary folders):

- config: settings (`config.toml`) and `themes/`; `~/.config/mergetui` on Linux;
  `$MERGETUI_CONFIG_DIR` wins.
- data: the history of runs (`runs.jsonl`); `~/.local/share/mergetui`; `$MERGETUI_DATA_DIR` wins.
- cache: analysis results (`analysis/`); `~/.cache/mergetui`; `$MERGETUI_CACHE_DIR` wins.

Nothing here creates a folder: whoever writes into one makes it. (Models live in the Hugging Face
cache, whose rule is huggingface_hub's: `checkpoints.locate.hub_cache_dir`.)
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "mergetui"
CONFIG_ENV = "MERGETUI_CONFIG_DIR"
DATA_ENV = "MERGETUI_DATA_DIR"
CACHE_ENV = "MERGETUI_CACHE_DIR"


def _folder(variable: str, kind: str) -> Path:
    """`$variable` when set, else platformdirs' `user_<kind>_dir` for mergetui."""
    override = os.environ.get(variable)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP_NAME))


def config_dir() -> Path:
    """Where settings and user themes live; `$MERGETUI_CONFIG_DIR` wins over the default."""
    return _folder(CONFIG_ENV, "config")


def user_themes_dir() -> Path:
    """The user's own themes (beside the bundled ones, `resources.themes_dir`)."""
    return config_dir() / "themes"


def data_dir() -> Path:
    """Where mergetui keeps its data; `$MERGETUI_DATA_DIR` wins over the platform default."""
    return _folder(DATA_ENV, "data")


def cache_dir() -> Path:
    """Where mergetui keeps what it can compute again; `$MERGETUI_CACHE_DIR` wins."""
    return _folder(CACHE_ENV, "cache")


def analysis_cache_dir() -> Path:
    """Where analysis results are kept (`<cache>/analysis`)."""
    return cache_dir() / "analysis"
