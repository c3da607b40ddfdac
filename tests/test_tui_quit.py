"""Quitting while a merge runs asks first (quitting cancels the merge), on tiny real checkpoints.

The engine is the real one, held at its first finished tensor so that the merge is surely running
when ctrl+q is pressed.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest
from tui_helpers import gate_the_engine, wait_reached

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.dialogs.confirm import ConfirmDialog, ConfirmQuit
from mergetui.tui.run.screen import RunScreen


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


def write_recipe(tmp_path: Path, family: dict[str, Path]) -> Path:
    path = tmp_path / "soup.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "linear"
            dtype = "float32"
            output = "out"

            [models.a]
            source = "{family["a"]}"
            [models.a.parameters]
            weight = 0.6

            [models.b]
            source = "{family["b"]}"
            [models.b.parameters]
            weight = 0.4
            """
        ),
        encoding="utf-8",
    )
    return path


async def merging(app: MergeTuiApp, pilot, reached: threading.Event) -> RunScreen:
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.press("f4")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, RunScreen)
    await pilot.press("r")
    await wait_reached(pilot, reached)
    assert screen.running and app.merge_running()
    return screen


async def test_quit_while_merging_asks_and_no_keeps_merging(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await merging(app, pilot, reached)
        await pilot.press("ctrl+q")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert dialog.title_text == "Quit and cancel the merge?"
        await pilot.press("ctrl+q")  # asked once, not twice
        await pilot.pause()
        assert app.screen is dialog and len(app.screen_stack) == 2
        await pilot.press("n")
        await pilot.pause()
        assert app.screen is screen and app.is_running
        assert not screen.cancel_event.is_set()
        release.set()
        for _ in range(400):
            await app.workers.wait_for_complete()
            await pilot.pause(0.05)
            if not screen.running:
                break
        assert screen.last_outcome == "finished"
        assert (tmp_path / "out" / "model.safetensors").is_file()
        assert not app.merge_running()
        await pilot.press("ctrl+q")  # nothing running and nothing unsaved: quits at once
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running


async def test_quit_while_merging_yes_quits_and_the_merge_leaves_nothing(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await merging(app, pilot, reached)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        cancel = screen.cancel_event
        await pilot.press("y")
        await pilot.pause()
        assert cancel is not None and cancel.is_set()  # told to stop before the app goes
        release.set()
    assert not app.is_running
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        ".mergetui-tmp-" in p.name for p in tmp_path.iterdir()
    ):
        time.sleep(0.05)
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.iterdir() if ".mergetui-tmp-" in p.name] == []


async def test_quit_while_merging_with_unsaved_changes_asks_both_and_stay_keeps_merging(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        with app.document.edit("weight"):
            app.document.recipe.models["a"].parameters["weight"] = 0.7
        screen = await merging(app, pilot, reached)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit)  # then the unsaved recipe
        await pilot.press("escape")  # stay
        await pilot.pause()
        assert app.screen is screen and app.is_running
        assert not screen.cancel_event.is_set()  # staying does not cancel the merge
        release.set()
        for _ in range(400):
            await app.workers.wait_for_complete()
            await pilot.pause(0.05)
            if not screen.running:
                break
        assert screen.last_outcome == "finished"
