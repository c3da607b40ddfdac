"""The grid's vocabulary on its own: cell values, the heat scale, and the kinds a group stands for."""

from __future__ import annotations

from mergetui.editing.cells import (
    ALL,
    ATTENTION,
    MLP,
    NA,
    REST,
    CellRange,
    analysis_kinds,
    as_cell,
    param_scale,
)
from mergetui.merge.analysis import KINDS
from mergetui.recipe.methods import METHODS


def test_cells_hold_floats_none_or_na() -> None:
    assert as_cell(1) == 1.0 and isinstance(as_cell(1), float)
    assert as_cell(True) == 1.0 and as_cell(None) is None and as_cell("x") is None
    assert not NA and repr(NA) == "NA"


def test_cell_ranges_span_either_corner() -> None:
    area = CellRange.spanning((3, 2), (1, 0))
    assert (area.top, area.left, area.bottom, area.right) == (1, 0, 3, 2)
    assert area.size == 9 and (2, 1) in area and (4, 1) not in area and "x" not in area


def test_the_heat_scale_spans_at_least_zero_to_one() -> None:
    weight = METHODS["ties"].param("weight")
    density = METHODS["ties"].param("density")
    assert param_scale(weight, [0.3, 0.4]) == (0.0, 1.0)
    assert param_scale(weight, [-0.5, 2.0]) == (-0.5, 2.0)
    assert density is not None and density.maximum is not None
    assert param_scale(density, [5.0]) == (float(density.minimum), float(density.maximum))
    assert param_scale(None, []) == (0.0, 1.0)


def test_groups_stand_for_the_analysis_kinds() -> None:
    assert analysis_kinds(ALL) is None
    assert analysis_kinds(ATTENTION) == ["attention"] and analysis_kinds(MLP) == ["mlp"]
    assert set(analysis_kinds(REST) or ()) == set(KINDS) - {"attention", "mlp"}
