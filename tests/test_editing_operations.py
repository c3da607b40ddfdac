"""Operations over a selection without a terminal: set, add, multiply, nudge, presets,
interpolation, copy and paste, and the numbers and steps they use."""

from __future__ import annotations

import pytest
from editing_helpers import TIES, column, layer_row, layer_values, model_for

from mergetui.editing.cells import Block, CellRange, GridError, format_number, round_value
from mergetui.editing.operations import next_step
from mergetui.editing.presets import preset_values


def test_add_multiply_nudge_and_clamp() -> None:
    grid = model_for(TIES)
    col = column(grid, "density", "a")
    area = CellRange(layer_row(grid, 0), col, layer_row(grid, 4), col)
    grid.add(area, 0.1)
    assert layer_values(grid, col) == pytest.approx([0.6] * 5)
    grid.multiply(area, 0.5)
    assert layer_values(grid, col) == pytest.approx([0.3] * 5)
    grid.step = 0.05
    grid.nudge(CellRange(layer_row(grid, 0), col, layer_row(grid, 0), col), -1)
    assert layer_values(grid, col)[0] == pytest.approx(0.25)
    # density is at most 1: adding past it clamps
    grid.add(area, 5)
    assert layer_values(grid, col) == pytest.approx([1.0] * 5)


def test_weights_can_go_negative_but_stay_readable() -> None:
    grid = model_for(TIES)
    col = column(grid, "weight", "b")
    grid.add(CellRange(layer_row(grid, 0), col, layer_row(grid, 0), col), -0.6)
    assert grid.recipe.models["b"].parameters["weight"][0] == -0.1  # not -0.09999999999999998


def test_preset_over_a_selection_of_columns() -> None:
    grid = model_for(TIES)
    left, right = column(grid, "weight", "a"), column(grid, "weight", "b")
    area = CellRange(0, left, len(grid.rows) - 1, right)  # embeddings and head are skipped
    grid.preset(area, "ramp_up", 0.0, 1.0)
    for col in (left, right):
        assert layer_values(grid, col) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    grid.preset(area, "random", 0.0, 1.0, seed=3)
    # each column draws its own numbers, reproducibly
    assert layer_values(grid, left) != layer_values(grid, right)
    assert layer_values(grid, left) == preset_values("random", 5, 0, 1, seed=3)


def test_interpolate_between_first_and_last_rows() -> None:
    grid = model_for(TIES)
    col = column(grid, "weight", "b")
    grid.set_value(CellRange(layer_row(grid, 4), col, layer_row(grid, 4), col), 0.9)
    grid.set_value(CellRange(layer_row(grid, 0), col, layer_row(grid, 0), col), 0.1)
    grid.interpolate(CellRange(0, col, len(grid.rows) - 1, col))
    assert layer_values(grid, col) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    with pytest.raises(GridError):
        grid.interpolate(CellRange(layer_row(grid, 0), col, layer_row(grid, 1), col))


def test_copy_and_paste_blocks() -> None:
    grid = model_for(TIES)
    a, b = column(grid, "weight", "a"), column(grid, "weight", "b")
    block = grid.copy(CellRange(layer_row(grid, 0), a, layer_row(grid, 1), a))
    assert block.values == [[0.2], [pytest.approx(0.35)]]
    grid.paste(block, (layer_row(grid, 3), b))
    assert layer_values(grid, b) == pytest.approx([0.5, 0.5, 0.5, 0.2, 0.35])
    # a block hanging off the bottom edge is cut, not an error
    grid.paste(block, (layer_row(grid, 4), b))
    assert layer_values(grid, b)[-1] == pytest.approx(0.2)
    text = Block([[0.5, 1.0], [0.25, None]]).to_text()
    assert text == "0.5\t1\n0.25\t"
    assert Block.from_text("0.1, 0.2\n0.3\t0.4\n").values == [[0.1, 0.2], [0.3, 0.4]]
    with pytest.raises(GridError):
        Block.from_text("abc")


def test_numbers_and_steps() -> None:
    assert round_value(0.1 + 0.2) == 0.3
    assert format_number(0.123456789) == "0.1235"
    assert format_number(1e-5) == "1e-05"
    assert format_number(-0.25) == "-0.25"
    assert format_number(0) == "0"
    assert next_step(0.05, 1) == 0.1 and next_step(0.05, -1) == 0.025
    assert next_step(1.0, 1) == 1.0 and next_step(0.0001, -1) == 0.0001
