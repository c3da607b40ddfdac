"""Snapshots of the main screens (pytest-textual-snapshot): the Recipe screen's grid at 80x24 and
160x48, its Setup tab, the help screen, and the grid with the metric overlay on (tiny real
checkpoints) at 80x24 and 100x30. Regenerate with `--snapshot-update` after a deliberate
change to the layout, then look at the SVGs under tests/__snapshots__/ before committing them."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CACHE_ENV, CONFIG_ENV
from mergetui.resources import sample_recipes_dir
from mergetui.tui.app import MergeTuiApp


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default settings and theme, and an empty Hugging Face cache: the same screen on every machine.
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def sample(name: str, tmp_path: Path) -> RecipeDocument:
    target = tmp_path / name
    shutil.copy(sample_recipes_dir() / name, target)
    return RecipeDocument.open(target)


async def settled(pilot) -> None:
    await pilot.pause(0.4)  # the checkpoint checks start after a short pause in editing
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_recipe_grid_80x24(snap_compare, tmp_path: Path) -> None:
    app = MergeTuiApp(sample("marcoro14-slerp.toml", tmp_path))
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


def test_recipe_grid_160x48_with_a_selection(snap_compare, tmp_path: Path) -> None:
    app = MergeTuiApp(sample("daredevil-dare-ties.toml", tmp_path))

    async def select(pilot) -> None:
        await settled(pilot)
        await pilot.press("down", "shift+down", "shift+down", "shift+right")

    assert snap_compare(app, terminal_size=(160, 48), run_before=select)


def test_recipe_setup_80x24(snap_compare, tmp_path: Path) -> None:
    app = MergeTuiApp(sample("daredevil-dare-ties.toml", tmp_path))

    async def setup(pilot) -> None:
        await settled(pilot)
        await pilot.press("f6")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=setup)


def test_help_screen(snap_compare, tmp_path: Path) -> None:
    app = MergeTuiApp(sample("marcoro14-slerp.toml", tmp_path))

    async def help_(pilot) -> None:
        await settled(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 40), run_before=help_)


def ties_family(tmp_path: Path, family: dict[str, Path]) -> RecipeDocument:
    path = tmp_path / "ties.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "ties"
            base = "base"

            [models.base]
            source = "{family["base"]}"

            [models.a]
            source = "{family["a"]}"
            parameters = {{ weight = 0.6, density = 0.5 }}

            [models.b]
            source = "{family["b"]}"
            parameters = {{ weight = 0.4, density = [0.3, 0.7] }}
            """
        ),
        encoding="utf-8",
    )
    return RecipeDocument.open(path)


async def overlay_on(pilot) -> None:
    await settled(pilot)
    await pilot.press("o")
    await settled(pilot)
    await pilot.press("right")  # the cursor on a metric cell: the status line explains it
    await pilot.pause()


def test_grid_with_the_metric_overlay_80x24(snap_compare, tmp_path: Path, llama_family) -> None:
    app = MergeTuiApp(ties_family(tmp_path, llama_family))
    assert snap_compare(app, terminal_size=(80, 24), run_before=overlay_on)


def test_grid_with_the_agreement_overlay_split_100x30(
    snap_compare, tmp_path: Path, llama_family
) -> None:
    app = MergeTuiApp(ties_family(tmp_path, llama_family))

    async def agreement(pilot) -> None:
        await settled(pilot)
        await pilot.press("f", "O", "down", "down", "enter")
        await settled(pilot)

    assert snap_compare(app, terminal_size=(100, 30), run_before=agreement)
