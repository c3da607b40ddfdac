"""The grid's value model without a terminal: what cells show, and write-back.

Cells must equal what the core's resolution gives the merge; edits must land in the recipe in the
documented forms (explicit per-layer lists, filter-split lists) and leave untouched columns alone.
"""

from __future__ import annotations

import pytest
from editing_helpers import (
    SLERP_FILTERS,
    STACK,
    TIES,
    column,
    core_values,
    layer_row,
    layer_values,
    model_for,
)

from mergetui.editing.cells import ATTENTION, MLP, NA, REST, CellRange
from mergetui.editing.document import RecipeDocument
from mergetui.editing.layer_table import GridModel
from mergetui.recipe.model import Conditional
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml


def test_rows_are_embeddings_layers_and_head() -> None:
    grid = model_for(TIES)
    kinds = [row.kind for row in grid.rows]
    assert kinds == ["embed", *["layer"] * 5, "head"]
    assert [row.layer for row in grid.rows[1:-1]] == [0, 1, 2, 3, 4]
    assert grid.rows[1].t == 0 and grid.rows[5].t == 1 and grid.rows[3].t == 0.5


def test_columns_come_from_the_method_spec() -> None:
    grid = model_for(TIES)
    titles = [(c.param, c.model) for c in grid.columns]
    # weight and density for every model but the base (scope non_base), then the shared float lambda.
    assert titles == [
        ("weight", "a"),
        ("weight", "b"),
        ("density", "a"),
        ("density", "b"),
        ("lambda", None),
    ]


def test_cells_equal_the_core_resolution() -> None:
    grid = model_for(TIES)
    template = "model.layers.{i}.input_layernorm.weight"
    for param, model in (("weight", "a"), ("weight", "b"), ("density", "a"), ("lambda", None)):
        expected = core_values(grid, param, model, template)
        got = layer_values(grid, column(grid, param, model))
        assert got == pytest.approx(expected)
    # the gradient [0.2, 0.8] over five layers
    assert layer_values(grid, column(grid, "weight", "a")) == pytest.approx(
        [0.2, 0.35, 0.5, 0.65, 0.8]
    )
    # embeddings and head are resolved at t = 0: the first anchor
    col = column(grid, "weight", "a")
    assert grid.value(0, col) == pytest.approx(0.2)
    assert grid.value(len(grid.rows) - 1, col) == pytest.approx(0.2)
    assert not grid.editable(0, col) and "t = 0" in grid.why_not_editable(0, col)


def test_filtered_values_are_shown_split() -> None:
    grid = model_for(SLERP_FILTERS)
    assert [(c.param, c.group) for c in grid.columns] == [("t", ATTENTION), ("t", MLP), ("t", REST)]
    assert layer_values(grid, 0) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert layer_values(grid, 1) == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert layer_values(grid, 2) == pytest.approx([0.5] * 5)
    # no attention or mlp tensors at the embeddings: not applicable, and not editable
    assert grid.value(0, 0) is NA and grid.value(0, 2) == 0.5
    # the toggle cannot merge columns that really differ
    assert not grid.split
    assert grid.toggle_split() is True and len(grid.columns) == 3
    assert grid.toggle_split() is False and len(grid.columns) == 3
    assert grid.mixed_columns() == ["t"]


def test_layer_stack_rows_and_not_applicable_cells() -> None:
    grid = model_for(STACK)
    assert [grid.row_label(r) for r in range(len(grid.rows))] == [
        "embed",
        "0 x:0",
        "1 x:1",
        "2 x:2",
        "3 y:1",
        "4 y:2",
        "5 y:3",
        "head",
    ]
    scale_x, scale_y = column(grid, "scale", "x"), column(grid, "scale", "y")
    assert grid.value(layer_row(grid, 0), scale_y) is NA
    assert grid.value(layer_row(grid, 4), scale_x) is NA
    # scale is nullable with no default: no value, shown as a dash
    assert grid.value(layer_row(grid, 0), scale_x) is None
    assert grid.text(layer_row(grid, 0), scale_x) == "—"


def test_unknown_layer_count_is_assumed_and_said() -> None:
    recipe = loads_toml(TIES)
    grid = GridModel(RecipeDocument(recipe))
    assert len([r for r in grid.rows if r.kind == "layer"]) == 32
    assert "assuming 32 layers" in grid.layer_note
    grid.assumed_layers = 7
    grid.rebuild()
    assert len([r for r in grid.rows if r.kind == "layer"]) == 7


def test_custom_filters_make_a_column_read_only() -> None:
    text = TIES.replace(
        "weight = 0.5", 'weight = [{ filter = "q_proj", value = 1.0 }, { value = 0.5 }]'
    )
    grid = model_for(text)
    col = column(grid, "weight", "b", ATTENTION)  # shown split: q_proj differs from the rest
    assert grid.columns[col].read_only and "q_proj" in grid.columns[col].read_only
    assert grid.set_value(CellRange(2, col, 2, col), 0.1) == 0


def test_set_writes_an_explicit_per_layer_list() -> None:
    grid = model_for(TIES)
    col = column(grid, "weight", "b")
    changed = grid.set_value(CellRange(layer_row(grid, 1), col, layer_row(grid, 2), col), 0.9)
    assert changed == 2
    assert grid.recipe.models["b"].parameters["weight"] == [0.5, 0.9, 0.9, 0.5, 0.5]
    assert layer_values(grid, col) == pytest.approx([0.5, 0.9, 0.9, 0.5, 0.5])
    # columns nobody edited keep their form: a's gradient stays a two-anchor gradient
    assert grid.recipe.models["a"].parameters["weight"] == [0.2, 0.8]
    assert grid.recipe.models["b"].parameters["density"] == 0.7
    assert grid.document.modified


def test_split_column_writes_filter_entries() -> None:
    grid = model_for(TIES, split=True)
    attn, mlp = column(grid, "weight", "b", ATTENTION), column(grid, "weight", "b", MLP)
    grid.set_value(CellRange(layer_row(grid, 0), attn, layer_row(grid, 4), attn), 0.1)
    grid.set_value(CellRange(layer_row(grid, 0), mlp, layer_row(grid, 4), mlp), 0.9)
    written = grid.recipe.models["b"].parameters["weight"]
    assert written == [
        Conditional(value=[0.1] * 5, filter="self_attn"),
        Conditional(value=[0.9] * 5, filter="mlp"),
        Conditional(value=[0.5] * 5, filter=None),
    ]
    toml = dumps_toml(grid.recipe)
    assert '{ filter = "self_attn", value = [0.1, 0.1, 0.1, 0.1, 0.1] }' in toml
    # what the core resolves for real attention and mlp tensors is what was typed
    q = core_values(grid, "weight", "b", "model.layers.{i}.self_attn.q_proj.weight")
    down = core_values(grid, "weight", "b", "model.layers.{i}.mlp.down_proj.weight")
    norm = core_values(grid, "weight", "b", "model.layers.{i}.post_attention_layernorm.weight")
    assert q == pytest.approx([0.1] * 5) and down == pytest.approx([0.9] * 5)
    assert norm == pytest.approx([0.5] * 5)
    # with the toggle off the column stays split: its groups differ
    grid.toggle_split()
    assert [c.group for c in grid.columns if c.key == ("weight", "b")] == [ATTENTION, MLP, REST]


def test_editing_a_filtered_column_keeps_the_other_groups() -> None:
    grid = model_for(SLERP_FILTERS)
    grid.set_value(CellRange(layer_row(grid, 2), 2, layer_row(grid, 2), 2), 0.8)
    written = grid.recipe.parameters["t"]
    assert [e.filter for e in written] == ["self_attn", "mlp", None]
    assert written[0].value == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert written[2].value == [0.5, 0.5, 0.8, 0.5, 0.5]


def test_layer_stack_writes_per_slice_source() -> None:
    grid = model_for(STACK)
    scale_y = column(grid, "scale", "y")
    grid.set_value(CellRange(layer_row(grid, 4), scale_y, layer_row(grid, 4), scale_y), 0.5)
    # y's slice is three layers long: the one edited value fills the slice (no holes in a list)
    assert grid.recipe.slices[1].sources[0].parameters["scale"] == [0.5, 0.5, 0.5]
    assert grid.recipe.slices[0].sources[0].parameters == {}
    grid.preset(
        CellRange(layer_row(grid, 3), scale_y, layer_row(grid, 5), scale_y), "ramp_up", 1, 2
    )
    assert grid.recipe.slices[1].sources[0].parameters["scale"] == [1.0, 1.5, 2.0]


def test_undo_and_redo_restore_the_recipe() -> None:
    grid = model_for(TIES)
    document = grid.document
    col = column(grid, "weight", "a")
    before = dumps_toml(document.recipe)
    grid.set_value(CellRange(layer_row(grid, 0), col, layer_row(grid, 0), col), 0.7)
    after = dumps_toml(document.recipe)
    assert after != before and document.modified
    assert document.undo() == "set 1 cell to 0.7"
    grid.rebuild()
    assert dumps_toml(document.recipe) == before and not document.modified
    assert layer_values(grid, col)[0] == pytest.approx(0.2)
    assert document.redo() is not None
    grid.rebuild()
    assert dumps_toml(document.recipe) == after
    assert document.redo() is None


def test_nothing_changed_is_no_undo_step() -> None:
    grid = model_for(TIES)
    col = column(grid, "weight", "b")
    assert grid.set_value(CellRange(layer_row(grid, 0), col, layer_row(grid, 4), col), 0.5) == 0
    assert not grid.document.can_undo
