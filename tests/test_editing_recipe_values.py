"""Where a column's values live in a recipe and the forms an edited column is written in, on
recipes built by hand (no grid, no app)."""

from __future__ import annotations

import pytest
from editing_helpers import STACK, TIES

from mergetui.editing.cells import ATTENTION, MLP, REST, GridError
from mergetui.editing.recipe_values import (
    column_models,
    column_value,
    conditionals,
    fill_gaps,
    guess_layer_count,
    target_parameters,
    value_sources,
    write_filters,
)
from mergetui.editing.tensor_names import LLAMA_NAMES, TensorNames
from mergetui.recipe.methods import METHODS
from mergetui.recipe.model import Conditional
from mergetui.recipe.toml_read import loads_toml

GPT2 = TensorNames.from_names(
    [
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.ln_f.weight",
    ]
)


def test_column_models_leave_the_base_out_for_non_base_parameters() -> None:
    recipe = loads_toml(TIES)
    weight = METHODS["ties"].param("weight")
    assert weight is not None and weight.scope == "non_base"
    assert column_models(recipe, weight) == ["a", "b"]
    stack = loads_toml(STACK)
    scale = METHODS["passthrough"].param("scale")
    assert scale is not None
    assert column_models(stack, scale) == ["x", "y"]


def test_value_sources_and_the_longest_list() -> None:
    recipe = loads_toml(TIES)
    assert value_sources(recipe, "weight", "a") == [[0.2, 0.8]]
    assert value_sources(recipe, "weight", "b") == [0.5]
    assert value_sources(recipe, "weight", None) == []
    assert guess_layer_count(recipe) == 2
    recipe.models["b"].parameters["weight"] = [Conditional(value=[0.1] * 7, filter="mlp")]
    assert guess_layer_count(recipe) == 7
    assert conditionals(recipe.models["b"].parameters["weight"])[0].filter == "mlp"
    assert conditionals(0.5) == [] and conditionals([0.1, 0.2]) == []


def test_a_column_is_one_list_when_its_groups_agree_else_filter_entries() -> None:
    same = {ATTENTION: [0.1, 0.2], MLP: [0.1, 0.2], REST: [0.1, 0.2]}
    assert column_value(same, {ATTENTION: "self_attn", MLP: "mlp"}) == [0.1, 0.2]
    differ = {ATTENTION: [0.1, 0.2], MLP: [None, None], REST: [0.3, 0.3]}
    assert column_value(differ, {ATTENTION: "attn", MLP: "mlp"}) == [
        Conditional(value=[0.1, 0.2], filter="attn"),
        Conditional(value=[0.3, 0.3], filter=None),
    ]
    assert column_value({g: [None] for g in (ATTENTION, MLP, REST)}, {}) is None


def test_write_filters_keep_the_recipes_own_spelling() -> None:
    recipe = loads_toml(TIES)
    assert write_filters(recipe, LLAMA_NAMES, ("weight", "b")) == {
        ATTENTION: "self_attn",
        MLP: "mlp",
    }
    recipe.models["b"].parameters["weight"] = [
        Conditional(value=0.1, filter="attn"),
        Conditional(value=0.5),
    ]
    assert GPT2 is not None
    assert write_filters(recipe, GPT2, ("weight", "b"))[ATTENTION] == "attn"


def test_target_parameters_is_the_most_specific_place() -> None:
    recipe = loads_toml(TIES)
    assert target_parameters(recipe, ("weight", "a"), 0) is recipe.models["a"].parameters
    assert target_parameters(recipe, ("lambda", None), 0) is recipe.parameters
    stack = loads_toml(STACK)
    assert target_parameters(stack, ("scale", "y"), 1) is stack.slices[1].sources[0].parameters
    assert target_parameters(stack, ("scale", None), 0) is stack.slices[0].parameters
    with pytest.raises(GridError, match="not an input of slice 1"):
        target_parameters(stack, ("scale", "y"), 0)


def test_fill_gaps_takes_the_nearest_value() -> None:
    assert fill_gaps([None, 0.2, None, None, 0.8]) == [0.2, 0.2, 0.2, 0.8, 0.8]
    assert fill_gaps([None, None]) == [None, None]
