"""Issue 13 item 12: every path written in a recipe is relative to the recipe file (an untitled one
to the working folder); a path given on the command line is relative to the working folder. The
merge, the app's Run and Recipe screens, validate, convert, the model card and the history agree."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import tomllib
import yaml

from mergetui.cli import main
from mergetui.editing.document import RecipeDocument
from mergetui.merge.history import RunRecord, append_run, load_history
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.recipe.io import load_recipe
from mergetui.recipe.model import ModelEntry, Recipe
from mergetui.recipe.paths import output_folder, recipe_folder
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.recipe.insight_dialogs import MetricPicker
from mergetui.tui.recipe.screen import RecipeScreen
from mergetui.tui.run.screen import RunScreen

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/recipes/ (the recipe), tmp/work/ (the working folder), isolated app data."""
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "recipes").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def linear_recipe(folder: Path, family: dict[str, Path], output: str | None = "merged") -> Path:
    path = folder / "soup.toml"
    out_line = f'output = "{output}"\n' if output else ""
    path.write_text(
        '[merge]\nmethod = "linear"\ndtype = "float32"\n'
        + out_line
        + textwrap.dedent(
            f"""
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


# -- the merge command ---------------------------------------------------------------------------


def test_a_relative_output_lands_beside_the_recipe_whatever_the_working_folder(
    layout: Path, llama_family: dict[str, Path]
) -> None:
    recipe = linear_recipe(layout / "recipes", llama_family)
    assert main(["merge", os.path.relpath(recipe)]) == 0
    assert (layout / "recipes" / "merged" / "model.safetensors").is_file()
    assert not (layout / "work" / "merged").exists()


def test_out_on_the_command_line_is_relative_to_the_working_folder(
    layout: Path, llama_family: dict[str, Path]
) -> None:
    recipe = linear_recipe(layout / "recipes", llama_family)
    assert main(["merge", str(recipe), "--out", "from-cli"]) == 0
    assert (layout / "work" / "from-cli" / "model.safetensors").is_file()
    assert not (layout / "recipes" / "from-cli").exists()
    assert not (layout / "recipes" / "merged").exists()


def test_a_model_only_in_the_working_folder_is_found_by_validate_and_merge_alike(
    layout: Path, llama_family: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """mergekit reads relative model paths from the working folder: that stays a fallback, and
    validate (which the merge runs first) no longer refuses what the plan would find."""
    shutil.copytree(llama_family["a"], layout / "work" / "chat")
    recipe = layout / "recipes" / "r.toml"
    recipe.write_text(
        f'[merge]\nmethod = "linear"\noutput = "merged"\n\n[models.chat]\nsource = "./chat"\n'
        f'[models.chat.parameters]\nweight = 0.5\n\n[models.b]\nsource = "{llama_family["b"]}"\n'
        "[models.b.parameters]\nweight = 0.5\n",
        encoding="utf-8",
    )
    assert main(["validate", str(recipe), "--offline"]) == 0
    assert "not found" not in capsys.readouterr().out
    assert main(["merge", str(recipe)]) == 0
    assert (layout / "recipes" / "merged" / "model.safetensors").is_file()


def test_convert_to_another_folder_keeps_the_output_where_it_was(layout: Path) -> None:
    source = layout / "recipes" / "r.toml"
    source.write_text(
        '[merge]\nmethod = "linear"\noutput = "merged"\n\n[models.a]\nsource = "org/a"\n'
        "[models.a.parameters]\nweight = 1.0\n",
        encoding="utf-8",
    )
    target = layout / "elsewhere" / "r.yaml"
    target.parent.mkdir()
    assert main(["convert", str(source), str(target)]) == 0
    moved = load_recipe(target)
    assert moved.output == "../recipes/merged"
    assert output_folder(moved, recipe_folder(target)) == layout / "recipes" / "merged"


# -- the model card ------------------------------------------------------------------------------


def test_the_card_names_parents_a_reader_can_use_and_its_recipe_has_the_real_output(
    layout: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = layout / "hf-cache"
    repo = cache / "models--acme--base-7b"
    shutil.copytree(llama_family["base"], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(llama_family["a"], layout / "models" / "chat")
    recipe = layout / "recipes" / "r.toml"
    recipe.write_text(
        '[merge]\nmethod = "slerp"\nbase = "base"\noutput = "stale-name"\n\n'
        '[models.base]\nsource = "acme/base-7b"\n\n[models.chat]\nsource = "../models/chat"\n\n'
        "[parameters]\nt = 0.5\n",
        encoding="utf-8",
    )
    assert main(["merge", str(recipe), "--out", "cli-out"]) == 0
    out = layout / "work" / "cli-out"
    card = (out / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == ["acme/base-7b"]  # Hub ids only: a local path is invalid there
    assert "[acme/base-7b](https://huggingface.co/acme/base-7b)" in card
    assert "**chat**: local folder `chat`" in card
    assert "../models" not in card
    assert card.splitlines()[card.splitlines().index("---", 1) + 1] == "# cli-out"
    # The embedded recipes (and the files beside the weights) never carry the stale output.
    assert "stale-name" not in card
    toml_block = re.search(r"```toml\n(.*?)```", card, re.S).group(1)
    yaml_block = re.search(r"```yaml\n(.*?)```", card, re.S).group(1)
    assert "output" not in tomllib.loads(toml_block).get("merge", {})
    assert '"output"' not in yaml_block
    saved = load_recipe(out / "mergetui.toml")
    assert saved.output is None
    assert saved.models["base"].source == "acme/base-7b"  # Hub ids as they are
    assert Path(saved.models["chat"].source) == (layout / "models" / "chat").resolve()
    assert load_recipe(out / "mergekit_config.yml").output is None
    # Rerunning the copy needs a place to write: it says so, and writes nothing.
    assert main(["merge", str(out / "mergetui.toml")]) == 1


# -- the history ---------------------------------------------------------------------------------


def test_the_history_stores_absolute_recipe_and_output_paths(layout: Path) -> None:
    recipe_toml = '[merge]\nmethod = "linear"\n'
    append_run(
        RunRecord(0.0, recipe_toml, "merged", "finished", 1.0, recipe_path="../recipes/r.toml")
    )
    append_run(RunRecord(1.0, recipe_toml, "untitled-out", "failed", 1.0, recipe_path=None))
    append_run(RunRecord(2.0, recipe_toml, "", "failed", 1.0, recipe_path=None))
    first, untitled, nothing = load_history()
    assert first.recipe_path == str(layout / "recipes" / "r.toml")
    assert first.output_dir == str(layout / "recipes" / "merged")  # beside the recipe
    assert untitled.recipe_path is None
    assert untitled.output_dir == str(layout / "work" / "untitled-out")  # the working folder
    assert nothing.output_dir == ""


def test_an_untitled_recipe_resolves_against_the_working_folder(layout: Path) -> None:
    untitled = Recipe(method="linear", models={"a": ModelEntry("a", "org/a")}, output="x")
    assert recipe_folder(None) == layout / "work"
    assert output_folder(untitled, recipe_folder(None)) == layout / "work" / "x"
    assert output_folder(untitled, recipe_folder(None), out="y") == layout / "work" / "y"


def test_save_as_into_another_folder_keeps_every_path_pointing_where_it_did(layout: Path) -> None:
    """Save as rewrites relative paths as convert does: the saved file means the same merge."""
    (layout / "models" / "chat").mkdir(parents=True)
    source = layout / "recipes" / "r.toml"
    source.write_text(
        '[merge]\nmethod = "linear"\noutput = "merged"\n\n[models.chat]\nsource = "../models/chat"'
        '\n[models.chat.parameters]\nweight = 1.0\n\n[models.hub]\nsource = "org/a"\n'
        "[models.hub.parameters]\nweight = 1.0\n",
        encoding="utf-8",
    )
    document = RecipeDocument.open(source)
    saved = document.save(layout / "elsewhere" / "deeper" / "r.toml")
    reread = load_recipe(saved)
    assert reread.models["chat"].source == "../../models/chat"
    assert reread.models["hub"].source == "org/a"
    assert output_folder(reread, recipe_folder(saved)) == layout / "recipes" / "merged"
    # The document now lives there: a second save in place rewrites nothing.
    assert document.save() == saved
    assert load_recipe(saved).models["chat"].source == "../../models/chat"
    # An export to YAML elsewhere rewrites a copy; the document keeps its own paths.
    exported = document.export_yaml(layout / "recipes" / "r.yaml")
    assert load_recipe(exported).models["chat"].source == "../models/chat"
    assert document.recipe.models["chat"].source == "../../models/chat"


def test_an_untitled_recipe_saved_elsewhere_keeps_its_output_under_the_working_folder(
    layout: Path,
) -> None:
    document = RecipeDocument(
        Recipe(method="linear", models={"a": ModelEntry("a", "org/a")}, output="x")
    )
    saved = document.save(layout / "recipes" / "new.toml")
    assert output_folder(load_recipe(saved), recipe_folder(saved)) == layout / "work" / "x"


# -- the app -------------------------------------------------------------------------------------


async def test_after_a_merge_from_the_run_screen_the_recipe_screen_offers_the_output_metrics(
    layout: Path, llama_family: dict[str, Path]
) -> None:
    linear_recipe(layout / "recipes", llama_family)
    # Opened by a relative path, from a working folder that is not the recipe's.
    app = MergeTuiApp(RecipeDocument.open(Path("../recipes/soup.toml")))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        await pilot.press("f4")
        await pilot.pause()
        run = app.screen
        assert isinstance(run, RunScreen)
        await pilot.press("r")
        for _ in range(400):
            await app.workers.wait_for_complete()
            await pilot.pause(0.05)
            if not run.running:
                break
        assert run.last_outcome == "finished"
        merged = layout / "recipes" / "merged"
        assert (merged / "model.safetensors").is_file()
        assert not (layout / "work" / "merged").exists()
        assert app.last_merge_output == str(merged)
        await pilot.press("f3")
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)
        await pilot.press("O")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, MetricPicker)
        assert picker.output is not None
        assert [src for _, src, _ in picker.choices()].count("output") == 3
    record = load_history()[-1]
    assert record.recipe_path == str(layout / "recipes" / "soup.toml")
    assert record.output_dir == str(merged)
