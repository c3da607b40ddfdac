"""Which analysed layer a metric cell reads (the columns' placement and values are tested on whole
grids in tests/test_analysis_grid.py)."""

from __future__ import annotations

from mergetui.editing.cells import NA, GridColumn, GridRow
from mergetui.editing.overlay import metric_key


def test_a_metric_cell_reads_the_layer_its_model_comes_from() -> None:
    row = GridRow("layer", 1, layer=4, local=0, length=3, sources=(("x", 7), ("y", 2)))
    models = ("x", "y", "z")
    assert metric_key(row, GridColumn("cosine", "y", metric=True), models) == 2
    assert metric_key(row, GridColumn("cosine", "z", metric=True), models) is NA
    # agreement (no model) and the merge's output read the row's first source
    assert metric_key(row, GridColumn("agreement", None, metric=True), models) == 7
    assert metric_key(row, GridColumn("cosine", "output", metric=True), models) == 7
    assert metric_key(GridRow("head", 1), GridColumn("cosine", "x", metric=True), models) == "head"
    plain = GridRow("layer", 0, layer=5)
    assert metric_key(plain, GridColumn("agreement", None, metric=True), models) == 5
