"""Themes as files: bundled ones in `themes/`, the user's own in `<config>/themes/`.

A theme file is TOML: Textual's theme fields at the top level, optional `[variables]` (any Textual CSS
variable) and an optional `[heatmap]` with the grid's colour stops. A file that does not parse or names
colours Textual cannot read is reported and skipped; it never stops the app from starting.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COLOR_FIELDS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)
OTHER_FIELDS = {
    "name": str,
    "dark": bool,
    "ansi": bool,
    "luminosity_spread": float,
    "text_alpha": float,
}
TABLES = ("variables", "heatmap")

# Used for themes that come without a heat map (Textual's own, or files that leave it out).
DEFAULT_HEATMAP_DARK = ("#253a5e", "#2b6c8f", "#3f9c7a", "#c9a43a", "#d0573a")
DEFAULT_HEATMAP_LIGHT = ("#c6dbef", "#9ecae1", "#a1d99b", "#fdd0a2", "#fc9272")
DEFAULT_HEATMAP_ANSI = ("ansi_blue", "ansi_cyan", "ansi_green", "ansi_yellow", "ansi_red")

# ANSI colours whose usual palette entry is dark: text on them is bright white, black elsewhere.
_DARK_ANSI = {0, 1, 4, 5, 8}


class ThemeFileError(Exception):
    """A theme file that cannot be used, with the file named in the message."""


@dataclass(frozen=True)
class Heatmap:
    """Colour stops from low to high; ANSI stops are picked, never blended (16-colour terminals)."""

    stops: tuple[Color, ...]

    @classmethod
    def parse(cls, colors: tuple[str, ...] | list[str]) -> Heatmap:
        return cls(tuple(Color.parse(c) for c in colors))

    @property
    def ansi(self) -> bool:
        return any(stop.ansi is not None for stop in self.stops)

    def background(self, fraction: float) -> Color:
        """The heat colour at `fraction` (0 = low, 1 = high), clamped."""
        fraction = min(1.0, max(0.0, fraction))
        if len(self.stops) == 1:
            return self.stops[0]
        if self.ansi:
            index = min(len(self.stops) - 1, int(fraction * len(self.stops)))
            return self.stops[index]
        position = fraction * (len(self.stops) - 1)
        low = min(len(self.stops) - 2, int(position))
        return self.stops[low].blend(self.stops[low + 1], position - low)

    def text(self, background: Color) -> Color:
        """A readable text colour on `background`."""
        if background.ansi is not None:
            return Color.parse(
                "ansi_bright_white" if background.ansi in _DARK_ANSI else "ansi_black"
            )
        return Color(0, 0, 0) if background.brightness > 0.55 else Color(255, 255, 255)


@dataclass
class LoadedTheme:
    """A Textual theme plus what mergetui adds to it, and where it came from."""

    theme: Theme
    heatmap: Heatmap
    path: Path | None = None
    description: str = ""


@dataclass
class ThemeSet:
    """Every theme that loaded, and a message for each file that did not."""

    themes: dict[str, LoadedTheme] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def default_heatmap(theme: Theme) -> Heatmap:
    if theme.ansi:
        return Heatmap.parse(DEFAULT_HEATMAP_ANSI)
    return Heatmap.parse(DEFAULT_HEATMAP_DARK if theme.dark else DEFAULT_HEATMAP_LIGHT)


def _check_color(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ThemeFileError(
            f'{path}: {key} must be a colour string such as "#1e90ff", got {value!r}'
        )
    try:
        Color.parse(value)
    except ColorParseError as exc:
        raise ThemeFileError(f"{path}: {key} = {value!r} is not a colour ({exc})") from None
    return value


def parse_theme(data: dict, path: Path) -> LoadedTheme:
    """Turn one theme file's table into a Textual theme; raises ThemeFileError naming the problem."""
    known = set(COLOR_FIELDS) | set(OTHER_FIELDS) | set(TABLES) | {"description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ThemeFileError(
            f"{path}: unknown key(s) {', '.join(unknown)}; theme keys are {', '.join(sorted(known))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f'{path}: name is missing (add name = "my-theme")')
    if "primary" not in data:
        raise ThemeFileError(f"{path}: primary is missing (every theme needs a primary colour)")
    kwargs: dict = {"name": name.strip()}
    for key in COLOR_FIELDS:
        if key in data:
            kwargs[key] = _check_color(path, key, data[key])
    for key, kind in OTHER_FIELDS.items():
        if key == "name" or key not in data:
            continue
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise ThemeFileError(f"{path}: {key} must be a {kind.__name__}, got {value!r}")
        kwargs[key] = value
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        raise ThemeFileError(f"{path}: [variables] must map variable names to strings")
    kwargs["variables"] = dict(variables)
    theme = Theme(**kwargs)
    try:
        theme.to_color_system().generate()
    except Exception as exc:  # Textual raises several kinds here; all mean "unusable theme".
        raise ThemeFileError(f"{path}: Textual cannot build this theme ({exc})") from None

    heat = data.get("heatmap", {})
    if not isinstance(heat, dict):
        raise ThemeFileError(f"{path}: [heatmap] must be a table with colors = [...]")
    colors = heat.get("colors")
    if colors is None:
        heatmap = default_heatmap(theme)
    else:
        if not isinstance(colors, list) or len(colors) < 2:
            raise ThemeFileError(f"{path}: heatmap.colors needs at least two colours, low to high")
        for index, color in enumerate(colors):
            _check_color(path, f"heatmap.colors[{index}]", color)
        heatmap = Heatmap.parse(colors)
    description = data.get("description", "")
    return LoadedTheme(theme, heatmap, path, description if isinstance(description, str) else "")


def load_theme_file(path: Path) -> LoadedTheme:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ThemeFileError(f"{path}: cannot read ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"{path}: not valid TOML ({exc})") from None
    return parse_theme(data, path)


def load_themes(*folders: Path) -> ThemeSet:
    """Load every `*.toml` in the folders, in order; a later file with the same name wins."""
    found = ThemeSet()
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                loaded = load_theme_file(path)
            except ThemeFileError as exc:
                found.errors.append(str(exc))
                continue
            found.themes[loaded.theme.name] = loaded
    return found
