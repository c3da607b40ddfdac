"""The open recipe as a document: modified state, undo history, saving TOML, exporting YAML,
and mergekit YAML imports that are saved as TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetui.editing.document import RecipeDocument
from mergetui.errors import UserError
from mergetui.recipe.io import load_recipe
from mergetui.recipe.model import ModelEntry
from mergetui.recipe.yaml_import import loads_yaml

YAML = """\
merge_method: slerp
base_model: a
models:
  - model: org/a
  - model: org/b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - value: 0.5
dtype: bfloat16
"""


def test_new_document_is_untitled_and_unmodified() -> None:
    document = RecipeDocument.new()
    assert document.display_name == "untitled" and not document.modified
    with document.edit("add a"):
        document.recipe.models["a"] = ModelEntry("a", "org/a")
    assert document.modified
    with pytest.raises(UserError):
        document.save()  # no path yet: the app asks for one


def test_edit_rolls_back_on_error() -> None:
    document = RecipeDocument.new()
    with pytest.raises(RuntimeError), document.edit("half an edit"):
        document.recipe.models["a"] = ModelEntry("a", "org/a")
        raise RuntimeError("interrupted")
    assert document.recipe.models == {} and not document.can_undo


def test_undo_back_to_the_saved_state_is_unmodified(tmp_path: Path) -> None:
    document = RecipeDocument.new()
    saved = document.save(tmp_path / "r")
    assert saved == tmp_path / "r.toml" and saved.exists()
    with document.edit("method"):
        document.recipe.method = "ties"
    assert document.modified
    assert document.undo() == "method"
    assert not document.modified
    assert document.redo() == "method" and document.modified


def test_yaml_import_saves_as_toml_beside_it(tmp_path: Path) -> None:
    source = tmp_path / "config.yml"
    source.write_text(YAML, encoding="utf-8")
    document = RecipeDocument.open(source)
    assert document.path is None and document.display_name == "config.yml (imported)"
    assert document.suggested_path() == tmp_path / "config.toml"
    with pytest.raises(UserError) as caught:
        document.save(tmp_path / "again.yaml")
    assert "Export" in str(caught.value)
    target = document.save(document.suggested_path())
    assert document.path == target and document.display_name == "config.toml"
    assert load_recipe(target) == loads_yaml(YAML)


def test_export_yaml_round_trips_and_leaves_the_document_alone(tmp_path: Path) -> None:
    source = tmp_path / "config.yml"
    source.write_text(YAML, encoding="utf-8")
    document = RecipeDocument.open(source)
    written = document.export_yaml(tmp_path / "out" / "mergekit")
    assert written.suffix == ".yaml"
    assert loads_yaml(written.read_text()) == document.recipe
    assert document.path is None and not list((tmp_path / "out").glob(".*tmp"))


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        RecipeDocument.open(tmp_path / "nope.toml")
    assert "no such recipe file" in str(caught.value)
