"""Saving a recipe keeps the file as the person wrote it: comments, key order, untouched values and
its permissions. Only what the edit changed is rewritten (recipe/toml_update.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mergetui.cli import main
from mergetui.editing.document import RecipeDocument
from mergetui.recipe.io import load_recipe, save_recipe, write_text_atomic
from mergetui.recipe.model import Conditional, ModelEntry, Slice, SliceSource
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_update import update_toml
from mergetui.recipe.toml_write import dumps_toml, toml_data

# Comments on keys, between tables and at the end; a gradient spread over lines with a comment in
# it; [parameters] and the models before [merge], and `dtype` before `method`.
COMMENTED = """\
# Two fine-tunes onto their base, written by hand.
# The header comment has two lines.

[parameters]  # shared by every model
normalize = true   # keep the weights summing to one
# int8_mask saves memory on the GPU
int8_mask = false

[models.zeta]
source = "org/zeta"  # listed first on purpose

[models.zeta.parameters]
density = [
  0.2,  # early layers keep little
  0.5,
  0.8,  # late layers keep most
]
weight = 0.3

# ---- the second model ----
[models.alpha]
source = "org/alpha"
parameters = { weight = 0.7, density = [1, 0.5] }  # inline

[models.base]
source = "org/base"

[merge]
dtype = "bfloat16"  # dtype before method
method = "ties"
base = "base"
output = "merges/out"

# trailing comment
"""


@pytest.fixture
def umask() -> Iterator[int]:
    """A known umask for the test, restored after it."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1
    return text.replace(old, new)


def test_one_edit_changes_one_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    document = RecipeDocument.open(path)
    with document.edit("weight") as recipe:
        recipe.models["zeta"].parameters["weight"] = 0.45
    document.save()
    assert path.read_text() == _edited(COMMENTED, "weight = 0.3\n", "weight = 0.45\n")
    assert not document.modified
    # The gradient is as written (not `density = [0.2, 0.5, 0.8]`), and means what it meant.
    assert load_recipe(path).models["zeta"].parameters["density"] == [0.2, 0.5, 0.8]


def test_saving_without_edits_keeps_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    RecipeDocument.open(path).save()
    assert path.read_text() == COMMENTED


def test_edits_inside_an_inline_table_and_of_a_comment_line_key(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    document = RecipeDocument.open(path)
    with document.edit("weights") as recipe:
        recipe.models["alpha"].parameters["weight"] = 0.6
        recipe.parameters["normalize"] = False
    document.save()
    text = _edited(COMMENTED, "{ weight = 0.7,", "{ weight = 0.6,")
    text = _edited(text, "normalize = true ", "normalize = false ")
    assert path.read_text() == text


def test_added_and_removed_keys_leave_the_rest_as_written(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    document = RecipeDocument.open(path)
    with document.edit("several") as recipe:
        recipe.seed = 7
        recipe.output = None
        recipe.parameters["lambda"] = 1.0
        recipe.models["extra"] = ModelEntry("extra", "org/extra", parameters={"weight": 0.1})
    document.save()
    text = path.read_text()
    for line in COMMENTED.splitlines():
        if not line.startswith("output"):
            assert line in text
    assert "output" not in text
    assert "int8_mask = false\nlambda = 1.0\n" in text
    assert 'base = "base"\nseed = 7\n' in text
    assert (
        '[models.extra]\nsource = "org/extra"\n\n[models.extra.parameters]\nweight = 0.1\n' in text
    )
    again = load_recipe(path)
    assert again == document.recipe
    assert list(again.models) == ["zeta", "alpha", "base", "extra"]


def test_moved_models_keep_their_comments_and_the_new_order(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    document = RecipeDocument.open(path)
    with document.edit("move") as recipe:
        recipe.models = {name: recipe.models[name] for name in ("alpha", "zeta", "base")}
    document.save()
    text = path.read_text()
    assert "  0.2,  # early layers keep little\n" in text
    assert 'source = "org/zeta"  # listed first on purpose\n' in text
    assert list(load_recipe(path).models) == ["alpha", "zeta", "base"]


def test_save_as_keeps_the_comments_of_the_file_it_was_read_from(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    document = RecipeDocument.open(path)
    copy = document.save(tmp_path / "copy.toml")
    assert copy.read_text() == COMMENTED
    assert path.read_text() == COMMENTED


def test_a_new_recipe_and_an_imported_one_are_written_fresh(tmp_path: Path) -> None:
    document = RecipeDocument.new("linear")
    with document.edit("models") as recipe:
        recipe.models["a"] = ModelEntry("a", "org/a", parameters={"weight": [0, 0.5, 1]})
    target = document.save(tmp_path / "new.toml")
    assert target.read_text() == dumps_toml(document.recipe)
    config = tmp_path / "card.yaml"
    config.write_text(
        "# a comment YAML keeps to itself\nmodels:\n  - model: org/a\nmerge_method: linear\n"
    )
    imported = RecipeDocument.open(config)
    saved = imported.save(imported.suggested_path())
    assert saved.read_text() == dumps_toml(imported.recipe)


@pytest.mark.parametrize(
    "text",
    [
        # Models spread over the file, around [parameters].
        '[models.a]\nsource = "a"\n[parameters]\nweight = 1\n[models.b]\nsource = "b"\n'
        '[merge]\nmethod = "linear"\n',
        # Dotted keys instead of tables.
        'merge.method = "linear"\n[models]\na.source = "x"\nb = { source = "y" }\n',
        # Slices as arrays of tables.
        '[merge]\nmethod = "passthrough"\n[models.a]\nsource = "a"\n[[slices]]\n'
        '[[slices.sources]]\nmodel = "a"\nlayers = [0, 4]\n',
    ],
)
def test_unusual_layouts_always_save_what_the_recipe_says(text: str) -> None:
    original = loads_toml(text)
    assert update_toml(text, original) == text
    for change in (
        lambda r: setattr(r, "seed", 5),
        lambda r: setattr(r, "description", "now described"),
        lambda r: r.models.__setitem__("c", ModelEntry("c", "org/c")),
        lambda r: setattr(r, "models", dict(reversed(list(r.models.items())))),
        lambda r: r.parameters.__setitem__("t", [Conditional(0.5, "mlp"), Conditional(1)]),
        lambda r: setattr(r, "slices", [Slice([SliceSource("a", (0, 3))])]),
    ):
        recipe = loads_toml(text)
        change(recipe)
        again = loads_toml(update_toml(text, recipe))
        assert toml_data(again) == toml_data(recipe)
        assert list(again.models) == list(recipe.models)


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_saving_keeps_the_file_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(COMMENTED)
    path.chmod(mode)
    document = RecipeDocument.open(path)
    with document.edit("weight") as recipe:
        recipe.models["zeta"].parameters["weight"] = 0.5
    document.save()
    assert _mode(path) == mode
    save_recipe(document.recipe, path)
    assert _mode(path) == mode
    document.export_yaml(tmp_path / "out.yaml")
    (tmp_path / "out.yaml").chmod(mode)
    document.export_yaml(tmp_path / "out.yaml")
    assert _mode(tmp_path / "out.yaml") == mode


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_convert_force_keeps_the_file_mode(tmp_path: Path, mode: int) -> None:
    source = tmp_path / "recipe.toml"
    source.write_text(COMMENTED)
    for name in ("out.yaml", "out.toml"):
        target = tmp_path / name
        target.write_text("old\n")
        target.chmod(mode)
        assert main(["convert", str(source), str(target), "--force"]) == 0
        assert _mode(target) == mode
        assert load_recipe(target) == load_recipe(source)


def test_a_new_file_gets_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    write_text_atomic(tmp_path / "plain.txt", "x\n")
    assert _mode(tmp_path / "plain.txt") == expected
    document = RecipeDocument.open(_written(tmp_path / "recipe.toml"))
    assert _mode(document.save(tmp_path / "saved.toml")) == expected
    assert main(["convert", str(tmp_path / "recipe.toml"), str(tmp_path / "c.yaml")]) == 0
    assert _mode(tmp_path / "c.yaml") == expected
    os.umask(0o022)
    write_text_atomic(tmp_path / "other.txt", "x\n")
    assert _mode(tmp_path / "other.txt") == 0o644


def _written(path: Path) -> Path:
    path.write_text(COMMENTED)
    return path
