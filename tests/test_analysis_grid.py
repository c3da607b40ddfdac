"""The grid's metric overlay and the suggest rule, without a terminal, on hand-made analyses.

An `Analysis` is built from chosen per-tensor sums, so every expected number here is computed
from the documented rule (docs/insight.md) independently of the grid's code.
"""

from __future__ import annotations

import math

import pytest

from mergetui.editing.cells import ALL, ATTENTION, MLP, NA, REST, CellRange, GridError
from mergetui.editing.document import RecipeDocument
from mergetui.editing.layer_table import GridModel
from mergetui.editing.suggest import suggest_rule_lines
from mergetui.merge.analysis import Analysis, TensorSums
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml

TIES = """
[merge]
method = "ties"
base = "base"

[models.base]
source = "/models/base"

[models.a]
source = "/models/a"

[models.a.parameters]
weight = 0.6
density = 0.5

[models.b]
source = "/models/b"

[models.b.parameters]
weight = 0.4
density = 0.5
"""

SLERP = """
[merge]
method = "slerp"
base = "a"

[models.a]
source = "/models/a"

[models.b]
source = "/models/b"

[parameters]
t = 0.5
"""

LAYERS = 4
# Per layer: agreement of the task vectors, and (norm ratio, cosine) of a and b to the base.
AGREEMENT = {0: 0.9, 1: 0.5, 2: 0.2, 3: 0.9}
MODELS = {"a": (1.1, 0.98), "b": (1.0, 0.995)}


def sums_for(models: dict[str, tuple[float, float]], agreement: float, numel: int = 100) -> tuple:
    """Sums of a tensor whose reference has |r|^2 = numel and each model norm ratio s, cosine c."""
    ref_sq = float(numel)
    values = [float(numel), ref_sq]
    for s, c in models.values():
        sq = s * s * ref_sq
        dot = c * s * ref_sq
        values += [sq, dot, sq + ref_sq - 2 * dot]
    contested = float(numel)
    values += [agreement * contested, contested]
    return tuple(values)


def make_analysis(
    agreement: dict[int, float] = AGREEMENT,
    models: dict[str, tuple[float, float]] = MODELS,
    reference: str = "base",
    mlp_models: dict[str, tuple[float, float]] | None = None,
) -> Analysis:
    tensors = [TensorSums("model.embed_tokens.weight", "embed", "embedding", sums_for(models, 0.7))]
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        tensors.append(
            TensorSums(
                p + "self_attn.q_proj.weight",
                layer,
                "attention",
                sums_for(models, agreement[layer]),
            )
        )
        tensors.append(
            TensorSums(
                p + "mlp.up_proj.weight",
                layer,
                "mlp",
                sums_for(mlp_models or models, agreement[layer]),
            )
        )
        tensors.append(
            TensorSums(
                p + "input_layernorm.weight", layer, "norm", sums_for(models, agreement[layer], 10)
            )
        )
    tensors.append(TensorSums("lm_head.weight", "head", "head", sums_for(models, 0.6)))
    return Analysis(
        models=(reference, *models), reference=reference, has_base=True, tensors=tensors
    )


def grid(text: str, **kwargs) -> GridModel:
    document = RecipeDocument(loads_toml(text))
    return GridModel(document, layer_counts={m: LAYERS for m in document.recipe.models}, **kwargs)


def column(model: GridModel, param: str, who: str | None, group: str = ALL) -> int:
    for index, col in enumerate(model.columns):
        if (col.param, col.model, col.group) == (param, who, group):
            return index
    raise AssertionError(f"no column {param}/{who}/{group}: {[c.title for c in model.columns]}")


def layer_rows(model: GridModel) -> list[int]:
    return [r for r, row in enumerate(model.rows) if row.kind == "layer"]


# ---------------------------------------------------------------------------------------------
# The overlay


def test_metric_columns_sit_beside_each_models_first_parameter() -> None:
    model = grid(TIES)
    before = [c.title for c in model.columns]
    assert before == ["weight·a", "weight·b", "density·a", "density·b", "lambda"]
    insight = make_analysis()
    model.set_overlay(insight, "cosine")
    assert [c.title for c in model.columns] == [
        "weight·a",
        "cos·a",
        "weight·b",
        "cos·b",
        "density·a",
        "density·b",
        "lambda",
    ]
    cos_a = column(model, "cosine", "a")
    assert model.columns[cos_a].metric and model.columns[cos_a].read_only
    for r in layer_rows(model):
        layer = model.rows[r].layer
        assert model.value(r, cos_a) == pytest.approx(insight.group(layer).cosine["a"])
    assert model.value(0, cos_a) == pytest.approx(insight.group("embed").cosine["a"])
    assert model.value(len(model.rows) - 1, cos_a) == pytest.approx(
        insight.group("head").cosine["a"]
    )
    assert model.text(1, cos_a) == f"{insight.group(0).cosine['a']:.4f}"
    model.set_overlay(None, None)
    assert [c.title for c in model.columns] == before


def test_agreement_is_one_column_after_the_weights_and_distance_per_model() -> None:
    model = grid(TIES)
    insight = make_analysis()
    model.set_overlay(insight, "agreement")
    assert [c.title for c in model.columns] == [
        "weight·a",
        "weight·b",
        "agree",
        "density·a",
        "density·b",
        "lambda",
    ]
    agree = 2
    assert [model.value(r, agree) for r in layer_rows(model)] == pytest.approx(
        [insight.group(layer).agreement for layer in range(LAYERS)]
    )
    assert model.text(layer_rows(model)[0], agree) == "90.0%"
    model.set_overlay(insight, "distance")
    dist_b = column(model, "distance", "b")
    s, c = MODELS["b"]
    assert model.value(1, dist_b) == pytest.approx(math.sqrt(s * s + 1 - 2 * s * c))


def test_split_metric_columns_follow_the_groups() -> None:
    model = grid(TIES, split=True)
    insight = make_analysis(mlp_models={"a": (1.5, 0.5), "b": (1.0, 0.99)})
    model.set_overlay(insight, "cosine")
    row = layer_rows(model)[0]
    attn = column(model, "cosine", "a", ATTENTION)
    mlp = column(model, "cosine", "a", MLP)
    rest = column(model, "cosine", "a", REST)
    assert mlp == attn + 1 and rest == attn + 2
    assert column(model, "weight", "a", REST) == attn - 1
    assert model.value(row, attn) == pytest.approx(insight.group(0, ["attention"]).cosine["a"])
    assert model.value(row, mlp) == pytest.approx(0.5)
    assert model.value(row, rest) == pytest.approx(insight.group(0, ["norm"]).cosine["a"])
    assert model.value(0, attn) is NA  # no attention in the embeddings


def test_metric_cells_are_read_only_and_hot_where_models_differ() -> None:
    model = grid(TIES)
    insight = make_analysis(agreement={0: 0.9, 1: 0.5, 2: 0.2, 3: 0.7})
    model.set_overlay(insight, "agreement")
    agree = column(model, "agreement", None)
    rows = layer_rows(model)
    everything = CellRange(0, 0, len(model.rows) - 1, len(model.columns) - 1)
    model.set_value(everything, 0.25)
    assert model.value(rows[0], agree) == pytest.approx(0.9)
    assert not model.editable(rows[0], agree)
    assert "read-only" in model.why_not_editable(rows[0], agree)
    heats = [model.heat(r, agree) for r in rows]
    assert heats[2] == pytest.approx(1.0) and heats[0] == pytest.approx(0.0)
    assert heats[3] == pytest.approx((0.9 - 0.7) / (0.9 - 0.2))
    assert "against base" in model.describe(rows[0], agree)
    assert model.mixed_columns() == []


def test_the_reference_gets_no_metric_column() -> None:
    linear = TIES.replace('method = "ties"', 'method = "linear"')
    model = grid(linear)
    model.set_overlay(make_analysis(), "cosine")
    titles = [c.title for c in model.columns]
    assert "weight·base" in titles and "cos·base" not in titles
    assert titles.index("cos·a") == titles.index("weight·a") + 1


# ---------------------------------------------------------------------------------------------
# Suggest


def expected_weights(insight: Analysis, layer: int, weights: dict[str, float], pull: float):
    distances = {m: insight.group(layer).distance[m] for m in weights}
    inverse = {m: 1 / d for m, d in distances.items()}
    total = sum(weights.values())
    goals = {m: total * inverse[m] / sum(inverse.values()) for m in weights}
    return {m: weights[m] + pull * (goals[m] - weights[m]) for m in weights}


def test_suggest_leans_toward_the_model_that_moved_less_where_they_disagree() -> None:
    model = grid(TIES)
    insight = make_analysis()
    suggestion = model.suggest(insight, strength=0.5)
    rows = layer_rows(model)
    a, b = column(model, "weight", "a"), column(model, "weight", "b")
    disagreement = {layer: 1 - AGREEMENT[layer] for layer in range(LAYERS)}
    low, high = min(disagreement.values()), max(disagreement.values())
    for r in rows:
        layer = model.rows[r].layer
        pull = 0.5 * (disagreement[layer] - low) / (high - low)
        want = expected_weights(insight, layer, {"a": 0.6, "b": 0.4}, pull)
        if pull == 0:
            assert (r, a) not in suggestion.changes and (r, b) not in suggestion.changes
            continue
        assert suggestion.changes[(r, a)] == pytest.approx(want["a"], rel=1e-3)
        assert suggestion.changes[(r, b)] == pytest.approx(want["b"], rel=1e-3)
        # b moved less: it gains, a loses, the total stays.
        assert suggestion.changes[(r, b)] > 0.4 > 0.6 - 0.2 and suggestion.changes[(r, a)] < 0.6
        assert suggestion.changes[(r, a)] + suggestion.changes[(r, b)] == pytest.approx(
            1.0, abs=2e-3
        )
    # The most disagreeing layer moves the furthest.
    layer2 = rows[2]
    assert suggestion.changes[(layer2, b)] == max(
        v for (r, c), v in suggestion.changes.items() if c == b
    )
    assert suggestion.columns == [a, b]
    assert suggestion.disagreement[(rows[2], ALL)] == pytest.approx(0.8)
    # Nothing is written by suggest itself.
    assert model.value(rows[2], a) == 0.6


def test_a_confirmed_suggestion_is_one_undo_step() -> None:
    model = grid(TIES)
    original = dumps_toml(model.recipe)
    suggestion = model.suggest(make_analysis())
    changed = model.apply_suggestion(suggestion)
    assert changed == len(suggestion.changes) > 0
    a = column(model, "weight", "a")
    for (r, c), value in suggestion.changes.items():
        assert model.value(r, c) == pytest.approx(value)
    assert model.document.undo() == "suggest from metrics"
    model.rebuild()
    assert dumps_toml(model.recipe) == original
    assert not model.document.can_undo
    assert model.value(layer_rows(model)[2], a) == 0.6


def test_strength_scales_the_pull() -> None:
    model = grid(TIES)
    insight = make_analysis()
    weak = model.suggest(insight, 0.2)
    strong = model.suggest(insight, 1.0)
    r, b = layer_rows(model)[2], column(model, "weight", "b")
    assert 0.4 < weak.changes[(r, b)] < strong.changes[(r, b)]
    want = expected_weights(insight, 2, {"a": 0.6, "b": 0.4}, 1.0)
    assert strong.changes[(r, b)] == pytest.approx(want["b"], rel=1e-3)
    with pytest.raises(GridError, match="strength"):
        model.suggest(insight, 0)


def test_slerp_t_leans_toward_the_base_where_the_two_differ() -> None:
    model = grid(SLERP)
    cosines = {0: 0.99, 1: 0.9, 2: 0.8, 3: 0.95}
    tensors = []
    for layer, cos in cosines.items():
        tensors.append(
            TensorSums(
                f"model.layers.{layer}.mlp.up_proj.weight",
                layer,
                "mlp",
                sums_for({"b": (1.0, cos)}, 1.0),
            )
        )
    insight = Analysis(models=("a", "b"), reference="a", has_base=True, tensors=tensors)
    suggestion = model.suggest(insight, 0.5)
    t = column(model, "t", None)
    rows = layer_rows(model)
    low, high = 1 - 0.99, 1 - 0.8
    for r in rows:
        d = ((1 - cosines[model.rows[r].layer]) - low) / (high - low)
        expected = 0.5 + 0.5 * d * (0.0 - 0.5)
        assert suggestion.changes.get((r, t), 0.5) == pytest.approx(expected, abs=1e-3)
    assert suggestion.changes[(rows[2], t)] == pytest.approx(0.25)
    other = Analysis(models=("b", "a"), reference="b", has_base=False, tensors=tensors)
    with pytest.raises(GridError, match="base"):
        model.suggest(other)


def test_suggest_refusals() -> None:
    passthrough = grid(
        """
[merge]
method = "model_stock"
base = "base"

[models.base]
source = "/m/base"

[models.a]
source = "/m/a"

[models.b]
source = "/m/b"
"""
    )
    with pytest.raises(GridError, match="neither"):
        passthrough.suggest(make_analysis())
    flat = grid(TIES)
    same = make_analysis(agreement={0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5})
    assert flat.suggest(same).empty


def test_rule_lines_name_the_reference_and_the_goal() -> None:
    weights = suggest_rule_lines("ties", "base")
    assert "moved less from base" in weights[0] and "1/distance" in weights[2]
    assert "t leans toward the base (a)" in suggest_rule_lines("slerp", "a")[2]
    assert weights[1].startswith("d = 1 - sign agreement")
