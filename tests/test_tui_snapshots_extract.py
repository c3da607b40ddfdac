"""Snapshot of the Checkpoints screen's Extract LoRA dialog at 80x24 (pytest-textual-snapshot): `e`
on a local fine-tune with the open recipe's base filled in, the output named beside the fine-tune,
and an energy share out of range refused with its message. Offline, with the models under the
working folder (so the paths are short and the same on every machine). Regenerate with
`--snapshot-update -k extract`, then look at the SVG under tests/__snapshots__/."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from textual.widgets import Input

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CACHE_ENV, CONFIG_ENV
from mergetui.recipe.model import ModelEntry
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def short_root(monkeypatch: pytest.MonkeyPatch):
    """A working folder whose path has the same length on every machine and under xdist (the
    details pane behind the dialog wraps the checkpoint's absolute path: a longer pytest folder,
    as xdist's popen-gwN, made it one line longer)."""
    root = Path(tempfile.mkdtemp(prefix="mergetui-snap-", dir="/tmp"))
    monkeypatch.chdir(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_extract_dialog_80x24(
    snap_compare, short_root: Path, llama_family: dict[str, Path]
) -> None:
    models = short_root / "models"
    shutil.copytree(llama_family["base"], models / "base")
    shutil.copytree(llama_family["a"], models / "tuned")
    document = RecipeDocument.new("task_arithmetic")
    document.recipe.models["base"] = ModelEntry("base", str(models / "base"))
    document.recipe.base = "base"
    config = AppConfig(models_dirs=[str(models)])
    app = MergeTuiApp(document=document, initial_screen="checkpoints", config=config)

    async def open_dialog(pilot) -> None:
        for _ in range(2):
            await pilot.pause(0.4)
            await app.workers.wait_for_complete()
        screen = app.screen
        screen.table.move_cursor(row=[row.name for row in screen.rows].index("tuned"))
        # the details pane behind the dialog fills in a worker: settled before the picture
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        app.screen.query_one("#ex-energy").value = "1.5"
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        # the focused field's cursor blinks: fixed before the picture, or it is there or not
        for field in app.screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=open_dialog)
