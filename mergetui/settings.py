"""The settings mergetui remembers between sessions (theme, nudge step, split view, models folders),
in `config.toml` in the user's config folder (`paths.config_dir`).

Read by the app and written by it and by `mergetui --models-dir DIR` (so they live outside the UI
layer). A missing or unreadable file means defaults: settings are a convenience, never a reason to
refuse to start.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mergetui.paths import config_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "config.toml"
DEFAULT_THEME = "mergetui-dark"


@dataclass
class AppConfig:
    """Settings that outlive a session."""

    theme: str = DEFAULT_THEME
    nudge_step: float | None = None
    split_filters: bool = False
    # Folders of local checkpoints the Checkpoints screen lists (`mergetui --models-dir DIR` adds).
    models_dirs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> AppConfig:
        """Read the config file, keeping defaults for anything missing or malformed."""
        path = config_dir() / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return cls()
        config = cls()
        for item in fields(cls):
            value = data.get(item.name)
            if item.name == "theme" and isinstance(value, str) and value:
                config.theme = value
            elif item.name == "nudge_step" and isinstance(value, (int, float)) and value > 0:
                config.nudge_step = float(value)
            elif item.name == "split_filters" and isinstance(value, bool):
                config.split_filters = value
            elif item.name == "models_dirs" and isinstance(value, list):
                config.models_dirs = [v for v in value if isinstance(v, str) and v]
        return config

    def add_models_dir(self, folder: str | Path) -> str | None:
        """Remember a folder (absolute); returns it, or None when it was already remembered."""
        text = str(Path(folder).expanduser().resolve())
        if text in self.models_dirs:
            return None
        self.models_dirs.append(text)
        return text

    def save(self) -> Path:
        """Write the file atomically (a temp file renamed into place)."""
        import tomli_w

        folder = config_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_FILE
        data = {key: value for key, value in asdict(self).items() if value is not None}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
        return path


def remember_models_dirs(folders: list[str] | list[Path]) -> list[str]:
    """Add folders to the saved settings (`mergetui --models-dir`); returns those newly added."""
    from mergetui.errors import UserError

    config = AppConfig.load()
    added = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(
                "models folder not found", where=str(path), fix="give an existing folder"
            )
        text = config.add_models_dir(path)
        if text is not None:
            added.append(text)
    if added:
        config.save()
    return added
