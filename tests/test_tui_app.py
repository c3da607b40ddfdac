"""The app driven by keys (Textual's Pilot) on tiny real checkpoints: screens, help, palette, every
grid operation, undo/redo, files (save, reopen, YAML export, open), the unsaved-changes prompt, the
recipe editor's forms, and the grid at 80x24 and 200x60."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.color import ColorType

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV
from mergetui.recipe.io import load_recipe
from mergetui.recipe.model import Conditional
from mergetui.recipe.yaml_import import loads_yaml
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.dialogs.confirm import ConfirmQuit
from mergetui.tui.dialogs.methods import MethodPicker
from mergetui.tui.dialogs.models import AddModelDialog
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.dialogs.presets import PresetDialog
from mergetui.tui.dialogs.slices import SliceDialog
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpScreen
from mergetui.tui.recipe.grid import LayerGrid
from mergetui.tui.recipe.screen import RecipeScreen
from mergetui.tui.recipe.setup import SetupPane
from mergetui.tui.recipe.slices import SlicesPane


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ties_recipe(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    """TIES over three tiny Llama checkpoints (4 layers each), as a saved TOML recipe."""
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
            weight = [0.2, 0.8]
            density = 0.5
            """
        ),
        encoding="utf-8",
    )
    return path


async def started(app: MergeTuiApp, pilot) -> RecipeScreen:
    """Wait for the first frame, the checkpoint-header reader and the delayed checks."""
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, RecipeScreen)
    return screen


def grid_of(app: MergeTuiApp) -> LayerGrid:
    return app.screen.query_one(LayerGrid)


def col(grid: LayerGrid, param: str, model: str | None, group: str = "all") -> int:
    for index, column in enumerate(grid.model.columns):
        if (column.param, column.model, column.group) == (param, model, group):
            return index
    raise AssertionError(f"no column {param}/{model}/{group}")


def layers(grid: LayerGrid, column: int) -> list[float]:
    return [
        grid.model.value(r, column) for r, row in enumerate(grid.model.rows) if row.kind == "layer"
    ]


async def go(pilot, grid: LayerGrid, row: int, column: int) -> None:
    """Walk the cursor there with arrow keys (as a person would)."""
    while grid.cursor[0] < row:
        await pilot.press("down")
    while grid.cursor[0] > row:
        await pilot.press("up")
    while grid.cursor[1] < column:
        await pilot.press("right")
    while grid.cursor[1] > column:
        await pilot.press("left")


async def type_text(pilot, text: str) -> None:
    for character in text:
        await pilot.press(
            {" ": "space", ".": "full_stop", "/": "slash", "-": "minus"}.get(character, character)
        )


# -- start-up, screens, help, palette ------------------------------------------------------------


def test_first_frame_imports_no_torch_or_transformers(ties_recipe: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from mergetui.tui.app import MergeTuiApp
        from mergetui.editing.document import RecipeDocument

        async def main():
            app = MergeTuiApp(RecipeDocument.open({str(ties_recipe)!r}))
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause()
                first = sorted(m for m in ("torch", "transformers") if m in sys.modules)
                await app.workers.wait_for_complete()
                await pilot.pause()
                grid_rows = len(app.screen.grid_model.rows)
            after = sorted(m for m in ("torch", "transformers") if m in sys.modules)
            print(json.dumps({{"first": first, "after": after, "rows": grid_rows}}))

        asyncio.run(main())
        """
    )
    env = {**__import__("os").environ, CONFIG_ENV: str(tmp_path / "config")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["first"] == []
    assert report["after"] == []  # reading checkpoint headers needs neither
    assert report["rows"] == 6  # embeddings, 4 layers (read from the headers), head


def footer_fits(app: MergeTuiApp, width: int) -> list[str]:
    """The screen's footer keys, after checking that all of them fit `width` columns."""
    footer = app.screen.query_one(KeyFooter)
    line, spans = footer.footer_line(width)
    assert line.cell_len == width  # one line, exactly the screen's width
    shown = [span.item.key for span in spans]
    # Nothing left out for want of room (the footer would drop a key rather than cut it).
    assert shown == [item.key for item in footer.items if not item.palette] + ["ctrl+p"]
    assert footer.shown_keys == shown
    return shown


async def test_screens_have_one_key_each_and_are_in_the_footer(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        footer_keys = footer_fits(app, 80)
        assert footer_keys[:6] == ["ctrl+s", "f1", "f2", "f3", "f4", "f5"]
        assert "ctrl+q" not in footer_keys  # Quit is in F1 and the palette: no room at 80
        from mergetui.tui.chat.screen import ChatScreen
        from mergetui.tui.checkpoints.screen import CheckpointsScreen
        from mergetui.tui.run.screen import RunScreen

        for key, mode, screen_class in (
            ("f2", "checkpoints", CheckpointsScreen),
            ("f4", "run", RunScreen),
            ("f5", "chat", ChatScreen),
        ):
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode == mode
            assert isinstance(app.screen, screen_class)
            keys_here = footer_fits(app, 80)
            assert {"f1", "f2", "f3", "f4", "f5"} <= set(keys_here)
            assert "ctrl+s" not in keys_here  # Save is shown on the Recipe screen only
            # The bottom line of the screen is the footer's line.
            bottom = app.screen._compositor.render_strips()[-1].text
            assert bottom == app.screen.query_one(KeyFooter).footer_line(80)[0].plain
        await pilot.press("f3")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)
        assert footer_fits(app, 80)[0] == "ctrl+s"


async def test_help_lists_the_keys_of_the_current_screen(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        titles = [title for title, _ in app.screen.sections]
        assert titles[:2] == ["Recipe screen", "Layers tab: the grid"]
        grid_help = dict((d, k) for k, d in app.screen.sections[1][1])
        assert grid_help["Nudge up by the step"] == "+ ="
        assert "Interpolate between first and last rows" in grid_help
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)
        await pilot.press("f2")
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        descriptions = [d for _, rows in app.screen.sections for _, d in rows]
        assert "Nudge up by the step" not in descriptions and "Checkpoints" in descriptions


async def test_palette_holds_every_key_action(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await started(app, pilot)
        actions = {c.action for c in app.palette_commands(screen)}
        for owner in (MergeTuiApp, RecipeScreen, LayerGrid, SetupPane, SlicesPane):
            for binding in owner.BINDINGS:
                action = binding.action.removeprefix("screen.").removeprefix("app.")
                if owner is LayerGrid and action.startswith(("move(", "extend(", "page(", "jump(")):
                    continue  # cursor movement is not a command
                if action == "command_palette":
                    continue
                if owner is RecipeScreen and action.startswith("stage("):
                    continue  # a multi-stage file's keys (tests/test_tui_multistage.py)
                assert action in actions or action == "help", (
                    f"{owner.__name__}: {binding.key} {action}"
                )


async def test_palette_runs_a_grid_command(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        assert not grid.model.split
        await pilot.press("ctrl+p")
        await type_text(pilot, "split by filter")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert grid.model.split
        assert [c.group for c in grid.model.columns[:3]] == ["attention", "mlp", "rest"]


# -- the grid by keyboard ------------------------------------------------------------------------


async def test_type_a_number_nudge_and_change_the_step(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await started(app, pilot)
        grid = grid_of(app)
        weight_a = col(grid, "weight", "a")
        assert layers(grid, weight_a) == [0.6] * 4
        await go(pilot, grid, 2, weight_a)  # layer 1
        await type_text(pilot, "0.25")
        await pilot.press("enter")
        await pilot.pause()
        assert layers(grid, weight_a) == [0.6, 0.25, 0.6, 0.6]
        assert screen.recipe.models["a"].parameters["weight"] == [0.6, 0.25, 0.6, 0.6]
        await pilot.press("plus")
        assert layers(grid, weight_a)[1] == pytest.approx(0.3)
        await pilot.press("right_square_bracket")  # step 0.05 -> 0.1, remembered
        assert grid.model.step == 0.1
        await pilot.pause()
        assert AppConfig.load().nudge_step == 0.1
        await pilot.press("minus", "minus")
        assert layers(grid, weight_a)[1] == pytest.approx(0.1)
        # enter edits the cell with its value filled in
        await pilot.press("enter")
        field = app.screen.query_one("#grid-prompt-input")
        assert field.value == "0.1"
        await pilot.press("escape")
        assert app.screen.prompt_kind is None and app.focused is grid
        assert "[modified]" in app.sub_title


async def test_select_a_block_then_set_add_multiply(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        weight_a, weight_b = col(grid, "weight", "a"), col(grid, "weight", "b")
        await go(pilot, grid, 1, weight_a)
        await pilot.press("shift+down", "shift+down", "shift+right")
        assert grid.selection.size == 6
        await pilot.press("s")
        await type_text(pilot, "0.5")
        await pilot.press("enter")
        assert layers(grid, weight_a) == [0.5, 0.5, 0.5, 0.6]
        assert layers(grid, weight_b)[:3] == [0.5, 0.5, 0.5]
        assert grid.anchor is not None  # the selection stays for the next operation
        await pilot.press("a")
        await type_text(pilot, "0.25")
        await pilot.press("enter")
        assert layers(grid, weight_a) == [0.75, 0.75, 0.75, 0.6]
        await pilot.press("m")
        await type_text(pilot, "2")
        await pilot.press("enter")
        assert layers(grid, weight_a) == [1.5, 1.5, 1.5, 0.6]
        # weight_b's last layer was outside the block and keeps its gradient value
        assert layers(grid, weight_b)[3] == pytest.approx(0.8)


async def test_presets_from_the_dialog(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        density_a = col(grid, "density", "a")
        await go(pilot, grid, 1, density_a)
        # no selection: the preset fills the cursor's whole column
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, PresetDialog)
        await pilot.press("down")  # flat -> ramp up
        await pilot.press("enter")
        await pilot.pause()
        assert layers(grid, density_a) == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-6)
        # seeded random in a range, on a selection
        await pilot.press("shift+down")
        await pilot.press("p")
        await pilot.pause()
        dialog = app.screen
        dialog.query_one("#low").value = "0.2"
        dialog.query_one("#high").value = "0.3"
        dialog.query_one("#seed").value = "42"
        for _ in range(8):
            await pilot.press("down")  # to "random", the last preset
        await pilot.press("enter")
        await pilot.pause()
        drawn = layers(grid, density_a)
        assert all(0.2 <= v <= 0.3 for v in drawn[:2]) and drawn[2:] == pytest.approx(
            [2 / 3, 1], abs=1e-6
        )


async def test_interpolate_copy_paste_undo_redo(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await started(app, pilot)
        grid = grid_of(app)
        weight_a, weight_b = col(grid, "weight", "a"), col(grid, "weight", "b")
        await go(pilot, grid, 1, weight_a)
        await type_text(pilot, "0")
        await pilot.press("enter")
        await go(pilot, grid, 4, weight_a)
        await type_text(pilot, "0.9")
        await pilot.press("enter")
        await go(pilot, grid, 1, weight_a)
        await pilot.press("shift+down", "shift+down", "shift+down")
        await pilot.press("i")
        assert layers(grid, weight_a) == pytest.approx([0, 0.3, 0.6, 0.9])
        await pilot.press("c")
        await pilot.press("escape")
        await go(pilot, grid, 1, weight_b)
        await pilot.press("v")
        assert layers(grid, weight_b) == pytest.approx([0, 0.3, 0.6, 0.9])
        await pilot.press("ctrl+z")
        assert layers(grid, weight_b) == pytest.approx([0.2, 0.4, 0.6, 0.8])
        assert screen.recipe.models["b"].parameters["weight"] == [0.2, 0.8]  # its gradient is back
        await pilot.press("ctrl+y")
        assert layers(grid, weight_b) == pytest.approx([0, 0.3, 0.6, 0.9])
        for _ in range(3):
            await pilot.press("ctrl+z")
        assert layers(grid, weight_a) == pytest.approx([0, 0.6, 0.6, 0.6])


async def test_filter_split_writes_filter_entries(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        await pilot.press("f")
        await pilot.pause()
        assert AppConfig.load().split_filters  # the next session starts split too
        attn, mlp = col(grid, "weight", "a", "attention"), col(grid, "weight", "a", "mlp")
        await go(pilot, grid, 1, attn)
        await pilot.press("shift+down", "shift+down", "shift+down")
        await pilot.press("s")
        await type_text(pilot, "0.1")
        await pilot.press("enter")
        await go(pilot, grid, 1, mlp)
        await type_text(pilot, "0.9")
        await pilot.press("enter")
        await pilot.press("ctrl+s")
        await pilot.pause()
    written = load_recipe(ties_recipe).models["a"].parameters["weight"]
    assert written == [
        Conditional(value=[0.1, 0.1, 0.1, 0.1], filter="self_attn"),
        Conditional(value=[0.9, 0.6, 0.6, 0.6], filter="mlp"),
        Conditional(value=[0.6, 0.6, 0.6, 0.6], filter=None),
    ]
    assert 'filter = "self_attn"' in ties_recipe.read_text()


# -- files ---------------------------------------------------------------------------------------


async def test_save_and_reopen_a_new_recipe(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    app = MergeTuiApp()
    target = tmp_path / "made.toml"
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await started(app, pilot)
        assert app.sub_title == "untitled"
        await pilot.press("f6")
        table = screen.query_one("#models")
        table.focus()
        for name in ("base", "a"):
            await pilot.press("a")
            await pilot.pause()
            assert isinstance(app.screen, AddModelDialog)
            app.screen.query_one("#source").value = str(llama_family[name])
            await pilot.press("enter")  # one enter adds it, named from the folder
            await pilot.pause()
        names = list(screen.recipe.models)
        assert len(names) == 2
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)
        app.screen.query_one("#answer").value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert target.exists() and app.sub_title == "made.toml"
    reopened = load_recipe(target)
    assert list(reopened.models) == names
    assert reopened.models[names[1]].source == str(llama_family["a"])


async def test_export_mergekit_yaml(ties_recipe: Path, tmp_path: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    target = tmp_path / "ties.yaml"
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        await go(pilot, grid, 1, col(grid, "density", "b"))
        await type_text(pilot, "0.7")
        await pilot.press("enter")
        app.action_export_yaml()
        await pilot.pause()
        app.screen.query_one("#answer").value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert app.document.modified  # exporting is not saving
    exported = loads_yaml(target.read_text())
    assert exported.method == "ties"
    assert "merge_method: ties" in target.read_text()
    text = target.read_text()
    assert "density: [0.7, 0.5, 0.5, 0.5]" in text


async def test_open_another_recipe_asks_about_unsaved_changes(
    ties_recipe: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[merge]\nmethod = "linear"\n', encoding="utf-8")
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await started(app, pilot)
        await pilot.press("plus")
        assert app.document.modified
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)
        app.screen.query_one("#answer").value = str(other)
        await pilot.press("enter")
        await pilot.pause()
        assert app.document.recipe.method == "linear"
        assert app.sub_title == "other.toml"
        assert screen.grid_model.problem.startswith("no models yet")


async def test_quit_with_unsaved_changes_asks_first(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    original = ties_recipe.read_text()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("plus")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("escape")  # stay
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen) and app.return_code is None
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("s")  # save, then quit
        await pilot.pause()
        assert app.return_code == 0
    assert ties_recipe.read_text() != original
    assert load_recipe(ties_recipe).models["a"].parameters["weight"] == [0.65, 0.6, 0.6, 0.6]


async def test_quit_discarding_changes(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    original = ties_recipe.read_text()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("plus", "ctrl+q")
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        assert app.return_code == 0
    assert ties_recipe.read_text() == original


async def test_quit_without_changes_does_not_ask(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code == 0


# -- the recipe editor ---------------------------------------------------------------------------


async def test_models_base_reorder_remove_and_layer_counts(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await started(app, pilot)
        table = screen.query_one("#models")
        assert [table.get_row_at(i)[3] for i in range(3)] == ["4", "4", "4"]  # from the headers
        await pilot.press("f6")
        table.focus()
        await pilot.press("down")  # model a
        await pilot.press("b")
        assert screen.recipe.base == "a"
        # the base takes no task-vector weight: its column goes, the old base's comes
        assert {c.model for c in screen.grid_model.columns if c.param == "weight"} == {"base", "b"}
        await pilot.press("shift+down")
        assert list(screen.recipe.models) == ["base", "b", "a"]
        await pilot.press("x")
        assert list(screen.recipe.models) == ["base", "b"] and screen.recipe.base is None
        await pilot.press("ctrl+z", "ctrl+z", "ctrl+z")
        assert list(screen.recipe.models) == ["base", "a", "b"] and screen.recipe.base == "base"


async def test_method_picker_and_shared_parameters(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await started(app, pilot)
        await pilot.press("f6")
        field = screen.query_one("#param-lambda")
        field.focus()
        field.value = "0.8"
        await pilot.press("enter")
        assert screen.recipe.parameters["lambda"] == 0.8
        assert set(layers(grid_of(app), col(grid_of(app), "lambda", None))) == {0.8}
        field.value = "[0.5, 1]"  # a gradient typed in the form
        await pilot.press("enter")
        assert screen.recipe.parameters["lambda"] == [0.5, 1.0]
        screen.query_one("#method-button").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, MethodPicker)
        details = str(app.screen.query_one("#details-text").render())
        assert "TIES" in details and "density" in details
        picker = app.screen.query_one("#methods")
        picker.highlighted = 0  # linear
        await pilot.press("enter")
        await pilot.pause()
        assert screen.recipe.method == "linear"
        # linear weighs every input, the base included
        assert [c.model for c in screen.grid_model.columns if c.param == "weight"] == [
            "base",
            "a",
            "b",
        ]


async def test_validation_panel_follows_edits(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await started(app, pilot)
        assert not [p for p in screen.problems if p.is_error]
        with app.document.edit("drop weight"):
            del app.document.recipe.models["a"].parameters["weight"]
        screen.recipe_changed()
        await pilot.pause()
        errors = [p for p in screen.problems if p.is_error]
        assert errors and "weight" in errors[0].message
        assert "error" in str(screen.query_one("#status").render())
        await pilot.press("ctrl+z")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert not [p for p in screen.problems if p.is_error]


async def test_slices_editor_builds_a_layer_stack(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(
        f'[merge]\nmethod = "passthrough"\n\n[models.x]\nsource = "{llama_family["a"]}"\n',
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await started(app, pilot)
        await pilot.press("f8")
        assert "merges whole models" in str(screen.query_one("#slices-help").render())
        for start, end in ((0, 3), (1, 4)):
            await pilot.press("a")
            await pilot.pause()
            assert isinstance(app.screen, SliceDialog)
            app.screen.query_one("#start").value = str(start)
            app.screen.query_one("#end").value = str(end)
            app.screen.query_one("#end").focus()
            await pilot.press("enter")
            await pilot.pause()
        assert [s.sources[0].layer_range for s in screen.recipe.slices] == [(0, 3), (1, 4)]
        summary = str(screen.query_one("#slices-summary").render())
        assert "2 slice(s) · 6 output layers" in summary and "parameters" in summary
        assert len([r for r in screen.grid_model.rows if r.kind == "layer"]) == 6
        # a range past the model's end is refused in the dialog
        await pilot.press("a")
        await pilot.pause()
        app.screen.query_one("#end").value = "9"
        app.screen.query_one("#end").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SliceDialog)
        assert "only 4 layers" in str(app.screen.query_one("#message").render())


# -- terminal reality ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_grid_scrolls_and_keeps_labels(tmp_path: Path, size: tuple[int, int]) -> None:
    # 40 layers, twelve models: more than fits at 80x24 in both directions
    models = "".join(f'[models.m{i}]\nsource = "org/m{i}"\n\n' for i in range(12))
    path = tmp_path / "wide.toml"
    path.write_text(f'[merge]\nmethod = "linear"\n\n{models}', encoding="utf-8")
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=size) as pilot:
        screen = await started(app, pilot)
        screen.layer_override = 40
        screen._refresh_grid()
        grid = grid_of(app)
        await pilot.pause()
        await pilot.press("ctrl+end", "end")
        await pilot.pause()
        assert grid.cursor == (41, 11)
        last_line = grid.render_line(grid.header_height + 41 - int(grid.scroll_y)).text
        assert last_line.startswith(" head")
        cursor_line = grid.render_line(grid.header_height + 40 - int(grid.scroll_y)).text
        assert cursor_line.startswith(" 39")
        if size == (80, 24):
            assert grid.scroll_y > 0 and grid.scroll_x > 0
        header = grid.render_line(1).text
        assert header.startswith("model") and "m11" in header


async def test_sixteen_colour_theme_draws_with_ansi_colours(ties_recipe: Path) -> None:
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        app.action_theme("terminal-16")
        await pilot.pause()
        grid = grid_of(app)
        for fraction in (0.0, 0.3, 0.7, 1.0):
            style = grid._heat_style(fraction)
            assert (
                style.bgcolor.type == ColorType.STANDARD and style.color.type == ColorType.STANDARD
            )


async def test_terminal_paste_and_mouse_click(ties_recipe: Path) -> None:
    from textual import events

    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        density_b = col(grid, "density", "b")
        # click on layer 2 of density·b (below the header rows, right of the labels)
        x = grid.label_width + grid._offsets[density_b] + 2
        y = grid.header_height + 3
        await pilot.click(LayerGrid, offset=(x, y))
        assert grid.cursor == (3, density_b)
        # a column pasted from a spreadsheet lands at the cursor
        grid.post_message(events.Paste("0.11\n0.22\n0.33\n0.44\n"))
        await pilot.pause()
        assert layers(grid, density_b) == pytest.approx([0.5, 0.5, 0.11, 0.22])


async def test_switching_screens_restyles_only_after_a_theme_change(
    ties_recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A screen resumed with F2..F5 keeps its styles (no full restyle), unless the theme changed
    while it was away: then it shows the new theme's colours."""
    from textual.screen import Screen

    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        restyled: list[str] = []
        real = Screen.update_node_styles

        def spy(self: Screen, animate: bool = True) -> None:
            restyled.append(type(self).__name__)
            real(self, animate)

        monkeypatch.setattr(Screen, "update_node_styles", spy)
        for key in ("f4", "f3", "f4", "f3"):
            await pilot.press(key)
            await pilot.pause()
        assert "RecipeScreen" not in restyled  # resumed twice, never restyled whole
        dark_background = app.screen.styles.background
        app.theme = "mergetui-light"
        await pilot.pause()
        await pilot.press("f4")
        await pilot.pause()
        assert "RunScreen" in restyled
        assert app.screen.styles.background != dark_background
        await pilot.press("f3")
        await pilot.pause()
        assert app.screen.styles.background != dark_background


async def test_a_typed_number_keeps_its_first_digit(ties_recipe: Path) -> None:
    """Found in the walkthrough: typing 0.3 set 3 (the first digit was selected and replaced)."""
    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        weight_a = col(grid, "weight", "a")
        await go(pilot, grid, 2, weight_a)  # layer 1
        await pilot.press("1", "full_stop", "5")  # quickly, in one go
        field = app.screen.query_one("#grid-prompt-input")
        assert field.value == "1.5" and field.selection.is_empty
        await pilot.press("enter")
        await pilot.pause()
        assert layers(grid, weight_a) == [0.6, 1.5, 0.6, 0.6]
        await pilot.press("down", "0")
        await pilot.pause()
        await pilot.press("full_stop", "2", "enter")
        await pilot.pause()
        assert layers(grid, weight_a) == [0.6, 1.5, 0.2, 0.6]
        # enter edits the value with the cursor after it (typing appends, backspace corrects)
        await pilot.press("enter")
        await pilot.pause()
        assert field.value == "0.2" and field.cursor_position == 3 and field.selection.is_empty
        await pilot.press("5", "enter")
        await pilot.pause()
        assert layers(grid, weight_a)[2] == 0.25


async def test_keys_typed_before_the_prompt_has_focus_continue_the_number(
    ties_recipe: Path,
) -> None:
    """A terminal delivers "0.3" typed quickly in one read: the three keys reach the grid before
    the prompt opened by the first has focus. Each used to open the prompt again ("3" won)."""
    from textual import events

    app = MergeTuiApp(RecipeDocument.open(ties_recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        grid = grid_of(app)
        weight_a = col(grid, "weight", "a")
        await go(pilot, grid, 2, weight_a)  # layer 1
        for key, character in (("0", "0"), ("full_stop", "."), ("3", "3")):
            app.post_message(events.Key(key, character))  # all queued before any is handled
        await pilot.pause()
        field = app.screen.query_one("#grid-prompt-input")
        assert field.value == "0.3" and field.has_focus
        await pilot.press("enter")
        await pilot.pause()
        assert layers(grid, weight_a) == [0.6, 0.3, 0.6, 0.6]
