"""The suggest rule's parameter comes from the method's traits (`MethodSpec.tuned_parameter` and
its scope), not from its name. The rule's numbers are tested in tests/test_analysis_grid.py."""

from __future__ import annotations

import pytest

from mergetui.editing.suggest import suggest_rule_lines, tuned_param
from mergetui.recipe.methods import METHODS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_tuned_parameter_is_one_of_the_methods_float_parameters(name: str) -> None:
    spec = METHODS[name]
    tuned = tuned_param(name)
    if spec.tuned_parameter is None:
        assert tuned is None
        return
    assert tuned is not None and tuned.name == spec.tuned_parameter and tuned.type == "float"
    goal = suggest_rule_lines(name, "ref")[2]
    if tuned.per_model:
        assert "1/distance" in goal
    else:
        assert goal.startswith(f"g = 0: {tuned.name} leans toward the base (ref)")


def test_an_unknown_method_has_no_tuned_parameter() -> None:
    assert tuned_param("no-such-method") is None
    assert "1/distance" in suggest_rule_lines("no-such-method", "ref")[2]
