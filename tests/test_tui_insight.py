"""The grid's metric overlay and suggest flow, driven by keys (Pilot) on tiny real checkpoints:
o toggles the overlay, O picks the metric (of the parents or of the merge output), S previews a
suggestion that y applies as one undo step, o cancels a running analysis, and a cached analysis
shows at once when the recipe is opened again."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from mergetui.editing.document import RecipeDocument
from mergetui.merge import analysis_run as analysis_module
from mergetui.merge.analysis_run import analyze
from mergetui.paths import CACHE_ENV, CONFIG_ENV
from mergetui.recipe.io import load_recipe
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.recipe.grid import LayerGrid
from mergetui.tui.recipe.insight_dialogs import MetricPicker, SuggestPreview
from mergetui.tui.recipe.screen import RecipeScreen


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


@pytest.fixture
def ties_recipe(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    path = tmp_path / "recipes" / "ties.toml"
    path.parent.mkdir()
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "ties"
            base = "base"
            output = "{tmp_path / "out"}"

            [models.base]
            source = "{llama_family["base"]}"

            [models.a]
            source = "{llama_family["a"]}"

            [models.a.parameters]
            weight = 0.6
            density = 0.5

            [models.b]
            source = "{llama_family["b"]}"

            [models.b.parameters]
            weight = 0.4
            density = 0.5
            """
        ),
        encoding="utf-8",
    )
    return path


async def settled(app: MergeTuiApp, pilot) -> None:
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.pause()


def grid_of(app: MergeTuiApp) -> LayerGrid:
    return app.screen.query_one(LayerGrid)


def titles(app: MergeTuiApp) -> list[str]:
    return [c.title for c in grid_of(app).model.columns]


def col(grid: LayerGrid, title: str, group: str = "all") -> int:
    for index, column in enumerate(grid.model.columns):
        if column.title == title and column.group == group:
            return index
    raise AssertionError(f"no column {title}: {[c.title for c in grid.model.columns]}")


def family_models(llama_family: dict[str, Path]) -> dict[str, Path]:
    return {"base": llama_family["base"], "a": llama_family["a"], "b": llama_family["b"]}


async def test_o_overlays_the_metric_beside_each_models_weight(
    ties_recipe: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        assert "cos·a" not in titles(app)
        await pilot.press("o")
        await settled(app, pilot)
        assert titles(app)[:4] == ["weight·a", "cos·a", "weight·b", "cos·b"]
        expected = analyze(family_models(llama_family), "base", device="cpu")
        assert expected.cached  # the app's run filled the cache
        grid = grid_of(app)
        cos_a = col(grid, "cos·a")
        for r, row in enumerate(grid.model.rows):
            if row.kind == "layer":
                assert grid.model.value(r, cos_a) == pytest.approx(
                    expected.group(row.layer).cosine["a"]
                )
        note = str(app.screen.query_one("#insight-note").render())
        assert "cos vs base" in note and "S suggest" in note
        # The cells are read-only: typing a number there changes nothing.
        await pilot.press("right")
        assert grid.cursor[1] == cos_a
        await pilot.press("plus")
        assert grid.model.value(1, cos_a) == pytest.approx(expected.group(0).cosine["a"])
        assert not app.document.modified
        await pilot.press("o")
        await pilot.pause()
        assert "cos·a" not in titles(app)
        assert not app.screen.query_one("#insight-note").display


async def test_O_picks_the_metric(ties_recipe: Path, llama_family: dict[str, Path]) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        await pilot.press("O")
        await pilot.pause()
        assert isinstance(app.screen, MetricPicker)
        await pilot.press("down", "down", "enter")  # agreement
        await settled(app, pilot)
        assert isinstance(app.screen, RecipeScreen)
        assert titles(app)[:3] == ["weight·a", "weight·b", "agree"]
        grid = grid_of(app)
        expected = analyze(family_models(llama_family), "base", device="cpu")
        agree = col(grid, "agree")
        assert grid.model.value(2, agree) == pytest.approx(expected.group(1).agreement)
        await pilot.press("O")
        await pilot.pause()
        await pilot.press("up", "enter")  # distance
        await settled(app, pilot)
        assert "dist·a" in titles(app) and "agree" not in titles(app)


async def test_suggest_previews_then_applies_as_one_undo_step(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        grid = grid_of(app)
        weight_a, weight_b = col(grid, "weight·a"), col(grid, "weight·b")
        rows = [r for r, row in enumerate(grid.model.rows) if row.kind == "layer"]
        before = [(grid.model.value(r, weight_a), grid.model.value(r, weight_b)) for r in rows]
        assert before == [(0.6, 0.4)] * 4
        await pilot.press("S")  # computes the metrics first, then shows the preview
        await settled(app, pilot)
        preview = app.screen
        assert isinstance(preview, SuggestPreview)
        rule = str(preview.query_one("#rule").render())
        assert "moved less from base" in rule and "1/distance" in rule
        table = preview.query_one("#proposal")
        assert table.row_count >= 1
        assert not app.document.modified  # a preview changes nothing
        await pilot.press("plus")
        assert preview.suggestion.strength == pytest.approx(0.6)
        proposal = dict(preview.suggestion.changes)
        await pilot.press("y")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)
        for (r, c), value in proposal.items():
            assert grid.model.value(r, c) == pytest.approx(value)
        after = [(grid.model.value(r, weight_a), grid.model.value(r, weight_b)) for r in rows]
        assert after != before
        for a, b in after:  # the total weight of each layer is kept
            assert a + b == pytest.approx(1.0, abs=2e-3)
        assert app.document.modified
        await pilot.press("ctrl+z")
        await pilot.pause()
        restored = [(grid.model.value(r, weight_a), grid.model.value(r, weight_b)) for r in rows]
        assert restored == before
        assert not app.document.modified
        # Escape in the preview keeps everything as it is.
        await pilot.press("S")
        await settled(app, pilot)
        assert isinstance(app.screen, SuggestPreview)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.document.modified
        assert app.document.undo() is None


async def test_o_cancels_a_running_analysis(
    ties_recipe: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analysis_module, "CHUNK_ELEMENTS", 1024)
    real = analysis_module._piece_sums

    def slow(*args):
        time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(analysis_module, "_piece_sums", slow)
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        await pilot.press("o")
        await pilot.pause(0.6)
        note = str(app.screen.query_one("#insight-note").render())
        assert "computing metrics" in note and "o cancels" in note
        await pilot.press("o")
        await settled(app, pilot)
        screen = app.screen
        assert isinstance(screen, RecipeScreen)
        assert not screen.overlay_on and "cos·a" not in titles(app)
        assert screen._insight_running is None
        assert not list(isolated.rglob("*.json"))  # nothing cached from a cancelled run


async def test_a_cached_analysis_shows_at_once_when_reopened(
    ties_recipe: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    analyze(family_models(llama_family), "base", device="cpu")  # an earlier session's result
    computed = []
    real = analysis_module._compute
    monkeypatch.setattr(
        analysis_module, "_compute", lambda *a, **k: computed.append(1) or real(*a, **k)
    )
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        await pilot.press("o")
        await settled(app, pilot)
        assert "cos·b" in titles(app)
        assert computed == []


async def test_after_a_merge_the_output_is_compared_with_each_parent(
    ties_recipe: Path, tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.merge.plan import make_plan
    from mergetui.merge.runner import run_merge

    recipe = load_recipe(ties_recipe)
    run_merge(make_plan(recipe, recipe_dir=ties_recipe.parent, device="cpu"))
    output = tmp_path / "out"
    assert (output / "config.json").exists()
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(120, 30)) as pilot:
        await settled(app, pilot)
        await pilot.press("O")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, MetricPicker)
        assert len(picker.choices()) == 6
        await pilot.press("down", "down", "down", "enter")  # cosine to the merge output
        await settled(app, pilot)
        assert {"cos·a", "cos·b", "cos·base"} <= set(titles(app))
        expected = analyze(
            {**family_models(llama_family), "output": output}, "output", device="cpu"
        )
        grid = grid_of(app)
        cos_base = col(grid, "cos·base")
        assert grid.model.value(2, cos_base) == pytest.approx(expected.group(1).cosine["base"])
        assert "merge output" in str(app.screen.query_one("#insight-note").render())


async def test_models_that_are_not_on_disk_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[merge]\nmethod = "linear"\n\n[models.x]\nsource = "nowhere/x"\n\n'
        '[models.y]\nsource = "nowhere/y"\n',
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        await pilot.press("o")
        await pilot.pause()
        screen = app.screen
        assert not screen.overlay_on
        messages = [n.message for n in app._notifications]
        assert any("is not on this machine" in m for m in messages)


async def test_the_palette_lists_the_insight_actions(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(app, pilot)
        names = [c.title for c in app.palette_commands(app.screen)]
        assert "Grid: Overlay a metric of the checkpoints (on/off)" in names
        assert "Grid: Suggest values from the metrics (preview)" in names
        assert "Cancel metrics" in names
