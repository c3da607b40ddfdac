"""A snapshot of the Search screen (F10) at 80x24, before a search: the form filled from the recipe's
`[search]` table, the empty curve and evaluations, and the recipe's own values (where the search
starts) in the heat map, its rows read from the tiny real checkpoints' headers. Regenerate with
`--snapshot-update`, then look at the SVG under tests/__snapshots__/."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CACHE_ENV, CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def recipe(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    """The tiny family under short names, a calibration text, and a recipe with a search table."""
    for name in ("base", "a", "b"):
        shutil.copytree(llama_family[name], tmp_path / "models" / name)
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "prose.txt").write_text("A short text to score on.\n" * 20)
    path = tmp_path / "soup.toml"
    path.write_text(
        textwrap.dedent(
            """\
            [merge]
            method = "task_arithmetic"
            base = "base"
            dtype = "float32"
            output = "merges/soup"

            [models.base]
            source = "models/base"

            [models.a]
            source = "models/a"
            [models.a.parameters]
            weight = [0.2, 0.8]

            [models.b]
            source = "models/b"
            [models.b.parameters]
            weight = 0.5

            [search]
            parameters = ["weight"]
            layer_groups = 2
            budget = 16
            seed = 1

            [[search.objective]]
            kind = "perplexity"
            text = "calib/prose.txt"
            """
        ),
        encoding="utf-8",
    )
    return path


async def on_search(pilot) -> None:
    app = pilot.app
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.press("f10")
    await pilot.pause(0.2)
    await app.workers.wait_for_complete()
    await pilot.pause()
    app.clear_notifications()
    await pilot.pause()


def test_search_screen_before_a_search_80x24(snap_compare, recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(recipe))
    assert snap_compare(app, terminal_size=(80, 24), run_before=on_search)
