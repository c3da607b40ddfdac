"""Snapshots of the Run screen (a finished merge, at 80x24 and 100x30) and the Chat screen (a greedy
reply; compare columns). The screens' clocks are fixed so durations and rates read the same on every
machine. Regenerate with `--snapshot-update`, then look at the SVGs under tests/__snapshots__/."""

from __future__ import annotations

import shutil
import textwrap
import time
import types
from pathlib import Path

import pytest

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.chat import stream
from mergetui.tui.run import clocks

FROZEN = types.SimpleNamespace(perf_counter=lambda: 0.0, monotonic=lambda: 0.0)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(clocks, "CLOCK", lambda: 100.0)
    monkeypatch.setattr(clocks, "WALL_CLOCK", lambda: 1_767_225_600.0)  # 2026-01-01 00:00
    monkeypatch.setattr(stream, "STREAM_INTERVAL", 0.0)
    # The peak estimate counts one working set per engine worker, one per core: pin the cores so
    # the figure on screen is the same on every machine.
    import mergetui.merge.runner as runner

    monkeypatch.setattr(runner, "_core_count", lambda: 2)
    import mergetui.chat.generate as generate
    import mergetui.chat.loader as loader

    monkeypatch.setattr(generate, "time", FROZEN)
    monkeypatch.setattr(loader, "time", FROZEN)
    yield
    time.tzset()


@pytest.fixture
def family(tmp_path: Path, llama_family: dict[str, Path]) -> dict[str, Path]:
    """The tiny family copied under short names, so paths on screen are the same everywhere."""
    models = tmp_path / "models"
    for name in ("base", "a", "b"):
        shutil.copytree(llama_family[name], models / name)
    return {name: models / name for name in ("base", "a", "b")}


@pytest.fixture
def recipe(tmp_path: Path, family: dict[str, Path]) -> Path:
    path = tmp_path / "soup.toml"
    path.write_text(
        textwrap.dedent(
            """\
            [merge]
            method = "linear"
            dtype = "float32"
            output = "merges/soup"

            [models.a]
            source = "models/a"
            [models.a.parameters]
            weight = 0.6

            [models.b]
            source = "models/b"
            [models.b.parameters]
            weight = 0.4
            """
        ),
        encoding="utf-8",
    )
    return path


async def wait_for(pilot, condition, tries: int = 600) -> None:
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition never became true")


def settle(app) -> None:
    """What depends on timing: toasts time out, the cursor blinks. Fixed before the picture."""
    from textual.widgets import Input

    app.clear_notifications()
    for field in app.screen.query(Input):
        field.cursor_blink = False


async def merged(pilot) -> None:
    app = pilot.app
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.press("f4")
    await pilot.pause()
    await pilot.press("r")
    screen = app.screen
    await wait_for(pilot, lambda: screen.last_outcome is not None)
    await app.workers.wait_for_complete()
    settle(app)
    await pilot.pause()


def test_run_screen_after_a_merge_80x24(snap_compare, recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(recipe))
    assert snap_compare(app, terminal_size=(80, 24), run_before=merged)


def test_run_screen_history_100x30(snap_compare, recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(recipe))

    async def history(pilot) -> None:
        await merged(pilot)
        await pilot.press("f7")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=history)


async def chatted(pilot) -> None:
    from mergetui.tui.chat.screen import open_chat

    app = pilot.app
    await pilot.pause()
    open_chat(app, "models/base")
    await pilot.pause()
    screen = app.screen
    await wait_for(pilot, lambda: screen.loaded is not None)
    screen.settings.temperature = 0
    screen.settings.max_new_tokens = 24
    for key in ("H", "e", "l", "l", "o"):
        await pilot.press(key)
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen.busy is None and screen.last_reply is not None)
    settle(app)
    await pilot.pause(0.3)


def test_chat_screen_with_a_reply_80x24(snap_compare, recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(recipe))
    assert snap_compare(app, terminal_size=(80, 24), run_before=chatted)


def test_chat_compare_100x30(snap_compare, recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(recipe))

    async def compare(pilot) -> None:
        await chatted(pilot)
        screen = pilot.app.screen
        await pilot.press("f7")
        for key in ("H", "i"):
            await pilot.press(key)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None)
        settle(pilot.app)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(100, 30), run_before=compare)
