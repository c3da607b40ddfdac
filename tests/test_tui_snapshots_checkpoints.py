"""Snapshots of the Checkpoints screen and the push dialog (pytest-textual-snapshot): local folders
plus Hub results with a remote model's details at 80x24, the empty offline screen at 100x30, the
push dialog at 80x24. The Hub is the tests' stand-in, so the pictures are the same on every
machine. Regenerate with `--snapshot-update`, then look at the SVGs under tests/__snapshots__/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hub_server import serve_for_test

from mergetui.paths import CONFIG_ENV
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    yield from serve_for_test(tmp_path, monkeypatch)


async def settled(pilot) -> None:
    await pilot.pause(0.5)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_checkpoints_with_hub_results_80x24(
    snap_compare, hub, tmp_path: Path, llama_family: dict[str, Path], arch_models: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(llama_family["base"], models / "llama-base")
    shutil.copytree(arch_models["qwen2"], models / "qwen-small")
    hub.add_repo("acme/tiny-merge", llama_family["a"], downloads=1200, likes=40, tags=["merge"])
    hub.add_repo("acme/tiny-chat", llama_family["b"], downloads=800, likes=90, license="mit")
    config = AppConfig(models_dirs=[str(models)])
    app = MergeTuiApp(initial_screen="checkpoints", config=config)

    async def search(pilot) -> None:
        await settled(pilot)
        await pilot.press("slash", *"tiny", "enter")
        await settled(pilot)
        await pilot.press("home", "enter")
        await settled(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=search)


def test_checkpoints_empty_and_offline_100x30(snap_compare, hub, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = MergeTuiApp(initial_screen="checkpoints", config=AppConfig())
    assert snap_compare(app, terminal_size=(100, 30), run_before=settled)


def test_push_dialog_80x24(snap_compare, hub, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SnapshotToken123456789")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")  # the hint names it; nothing is sent
    (tmp_path / "merges" / "my-merge").mkdir(parents=True)
    app = MergeTuiApp(initial_screen="checkpoints", config=AppConfig())

    async def open_dialog(pilot) -> None:
        await settled(pilot)
        app.action_push_to_hub("merges/my-merge")
        await pilot.pause()
        await pilot.press(*"me/my-merge")

    assert snap_compare(app, terminal_size=(80, 24), run_before=open_dialog)
