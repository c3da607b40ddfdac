"""Themes as files and remembered settings: bundled themes load, broken files are skipped with a
reason, user themes load too, and the chosen theme survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.color import Color

from mergetui.paths import CONFIG_ENV, config_dir
from mergetui.resources import themes_dir
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.themes import ThemeFileError, load_theme_file, load_themes


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv(CONFIG_ENV, str(folder))
    return folder


def test_bundled_themes_load_without_errors() -> None:
    found = load_themes(themes_dir())
    assert found.errors == []
    assert {"mergetui-dark", "mergetui-light", "terminal-16", "ember"} <= set(found.themes)
    assert not found.themes["mergetui-light"].theme.dark
    assert found.themes["mergetui-dark"].theme.dark


def test_the_16_colour_theme_uses_only_ansi_colours() -> None:
    loaded = load_themes(themes_dir()).themes["terminal-16"]
    theme = loaded.theme
    assert theme.ansi
    for name in ("primary", "secondary", "accent", "warning", "error", "success"):
        assert getattr(theme, name).startswith("ansi_"), name
    for name in ("foreground", "background", "surface", "panel"):
        assert getattr(theme, name) == "ansi_default"
    colours = {
        key: value for key, value in theme.variables.items() if not key.endswith("text-style")
    }
    assert all(value.startswith("ansi_") for value in colours.values())
    assert all(stop.ansi is not None for stop in loaded.heatmap.stops)
    # ANSI stops are picked, never blended into colours the terminal may not have
    assert loaded.heatmap.background(0.5).ansi is not None


def test_heatmap_blends_between_stops() -> None:
    loaded = load_themes(themes_dir()).themes["mergetui-dark"]
    low, high = loaded.heatmap.background(0), loaded.heatmap.background(1)
    assert low == loaded.heatmap.stops[0] and high == loaded.heatmap.stops[-1]
    middle = loaded.heatmap.background(0.125)
    assert middle not in loaded.heatmap.stops
    # readable text on dark and light backgrounds
    assert loaded.heatmap.text(Color(10, 10, 10)) == Color(255, 255, 255)
    assert loaded.heatmap.text(Color(250, 250, 250)) == Color(0, 0, 0)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('name = "x"\nprimary = "#1234567"', "not a colour"),
        ('primary = "#123456"', "name is missing"),
        ('name = "x"', "primary is missing"),
        ('name = "x"\nprimary = "#123456"\nprimry = "#000000"', "unknown key"),
        ('name = "x"\nprimary = "#123456"\n[heatmap]\ncolors = ["#000000"]', "at least two"),
        ('name = "x"\nprimary = "#123456"\ndark = "yes"', "dark must be a bool"),
        ("name = [", "not valid TOML"),
    ],
)
def test_broken_theme_files_are_explained(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ThemeFileError) as caught:
        load_theme_file(path)
    assert complaint in str(caught.value)
    assert str(path) in str(caught.value)


def test_user_themes_load_and_broken_ones_are_skipped(config_home: Path) -> None:
    themes = config_home / "themes"
    themes.mkdir(parents=True)
    (themes / "mine.toml").write_text(
        'name = "mine"\nprimary = "#ff00ff"\nbackground = "#101010"\n'
        '[heatmap]\ncolors = ["#000000", "#ffffff"]\n',
        encoding="utf-8",
    )
    (themes / "broken.toml").write_text(
        'name = "broken"\nprimary = "not-a-colour"\n', encoding="utf-8"
    )
    found = load_themes(themes_dir(), themes)
    assert "mine" in found.themes and "broken" not in found.themes
    assert len(found.errors) == 1 and "broken.toml" in found.errors[0]


def test_config_round_trip_and_bad_files(config_home: Path) -> None:
    assert config_dir() == config_home
    assert AppConfig.load() == AppConfig()
    AppConfig(theme="ember", nudge_step=0.01, split_filters=True).save()
    assert AppConfig.load() == AppConfig(theme="ember", nudge_step=0.01, split_filters=True)
    (config_home / "config.toml").write_text("theme = [", encoding="utf-8")
    assert AppConfig.load() == AppConfig()  # unreadable settings fall back to defaults


async def test_theme_switch_is_remembered(config_home: Path) -> None:
    app = MergeTuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "mergetui-dark"
        app.action_theme("terminal-16")
        await pilot.pause()
        assert app.heatmap.ansi
    assert AppConfig.load().theme == "terminal-16"
    again = MergeTuiApp()
    async with again.run_test(size=(80, 24)):
        assert again.theme == "terminal-16"


async def test_theme_from_the_command_palette(config_home: Path) -> None:
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        for character in "theme ember":
            await pilot.press("space" if character == " " else character)
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.theme == "ember"
    assert AppConfig.load().theme == "ember"


async def test_broken_theme_is_reported_not_fatal(config_home: Path) -> None:
    themes = config_home / "themes"
    themes.mkdir(parents=True)
    (themes / "oops.toml").write_text('name = "oops"\nprimary = "#zzzzzz"\n', encoding="utf-8")
    AppConfig(theme="oops").save()
    app = MergeTuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        messages = [n.message for n in app._notifications]
        assert any("oops.toml" in m and "theme skipped" in m for m in messages)
        assert any("'oops' is not installed" in m for m in messages)
        assert app.theme == "mergetui-dark"
