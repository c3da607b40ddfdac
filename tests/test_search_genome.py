"""The genome: CMA-ES's flat vector <-> a recipe with per-layer values, read back through the same
resolution the merge uses (`recipe.resolve`), so what is searched is what is merged."""

from __future__ import annotations

from pathlib import Path

import pytest
from evolve_helpers import layer_values, write_spec

from mergetui.errors import UserError
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml
from mergetui.recipe.validate import validate_recipe
from mergetui.search.genome import Genome
from mergetui.search.spec import load_search_spec

FAMILY = {"base": Path("/nowhere/base"), "a": Path("/nowhere/a"), "b": Path("/nowhere/b")}


def _genome(tmp_path: Path, search: str, layers: int = 4, **kwargs: str) -> Genome:
    return Genome(load_search_spec(write_spec(tmp_path, FAMILY, search=search, **kwargs)), layers)


def test_labels_bounds_and_start_smooth(tmp_path: Path) -> None:
    genome = _genome(tmp_path, "layer_groups = 2\nsmooth = true\nbudget = 10\n")
    assert genome.labels == ["a.weight[0]", "a.weight[1]", "b.weight[0]", "b.weight[1]"]
    assert (genome.lower, genome.upper) == ([0.0] * 4, [1.0] * 4)
    # Smooth: a group value is a gradient anchor (first layer, last layer); b's gradient is
    # [0.2, 0.8], so its anchors start where it is written.
    assert genome.x0 == pytest.approx([0.5, 0.5, 0.2, 0.8])


def test_start_stepped_reads_each_group_in_its_middle(tmp_path: Path) -> None:
    genome = _genome(tmp_path, "layer_groups = 2\nbudget = 10\n")
    # Groups: layers 0-1 (middle 0.5 -> t = 1/6) and 2-3 (middle 2.5 -> t = 5/6).
    assert genome.x0 == pytest.approx([0.5, 0.5, 0.2 + 0.6 / 6, 0.2 + 0.6 * 5 / 6])


def test_smooth_values_are_a_gradient(tmp_path: Path) -> None:
    genome = _genome(tmp_path, "layer_groups = 2\nsmooth = true\nbudget = 10\n")
    recipe = genome.recipe_for([0.1, 0.4, 0.9, 0.3])
    assert recipe.models["a"].parameters["weight"] == [0.1, 0.4]
    assert layer_values(recipe, "a") == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert layer_values(recipe, "b") == pytest.approx([0.9, 0.7, 0.5, 0.3])
    assert recipe.search is None and recipe.locations == {}


def test_stepped_values_hold_per_group(tmp_path: Path) -> None:
    genome = _genome(tmp_path, "layer_groups = 2\nbudget = 10\n", layers=5)
    recipe = genome.recipe_for([0.1, 0.4, 0.9, 0.3])
    # 5 layers in 2 groups: layers 0-2, then 3-4.
    assert recipe.models["a"].parameters["weight"] == [0.1, 0.1, 0.1, 0.4, 0.4]
    assert genome.group_t(0) == pytest.approx(1 / 4) and genome.group_t(1) == pytest.approx(7 / 8)
    counts = dict.fromkeys(recipe.models, 5)
    from mergetui.recipe.resolve import resolve_layer_values

    resolved = resolve_layer_values(
        recipe, counts, "weight", "b", "model.layers.{i}.mlp.up_proj.weight"
    )
    assert resolved.layers == pytest.approx([0.9, 0.9, 0.9, 0.3, 0.3])


def test_one_group_is_one_number(tmp_path: Path) -> None:
    genome = _genome(tmp_path, "budget = 10\n")
    assert genome.labels == ["a.weight[0]", "b.weight[0]"]
    recipe = genome.recipe_for([0.25, 0.75])
    assert recipe.models["a"].parameters["weight"] == 0.25
    assert recipe.models["b"].parameters["weight"] == 0.75
    assert "weight" not in recipe.models["base"].parameters  # the base has no task vector


def test_values_are_clipped_into_the_bounds(tmp_path: Path) -> None:
    search = 'parameters = ["weight"]\nbounds = { weight = [0.1, 0.6] }\nbudget = 10\n'
    genome = _genome(tmp_path, search)
    assert genome.x0 == pytest.approx([0.5, 0.5])  # b's gradient [0.2, 0.8] read mid-depth
    recipe = genome.recipe_for([-3.0, 2.0])
    assert (recipe.models["a"].parameters["weight"], recipe.models["b"].parameters["weight"]) == (
        0.1,
        0.6,
    )
    assert genome.from_unit(genome.to_unit([0.2, 0.35])) == pytest.approx([0.2, 0.35])
    assert genome.from_unit([-1.0, 2.0]) == [0.1, 0.6]
    with pytest.raises(ValueError):
        genome.recipe_for([0.2])


def test_a_start_outside_the_bounds_is_clipped(tmp_path: Path) -> None:
    path = write_spec(tmp_path, FAMILY, search="budget = 10\n")
    path.write_text(path.read_text().replace("weight = 0.5", "weight = 1.5"))
    genome = Genome(load_search_spec(path), 4)
    assert genome.x0[0] == 1.0


def test_shared_and_input_parameters(tmp_path: Path) -> None:
    # linear: the weight applies to every input, the base included.
    path = write_spec(tmp_path, FAMILY, search="budget = 10\n", method="linear")
    path.write_text(
        path.read_text().replace('base"\n', 'base"\nparameters = { weight = 0.1 }\n', 1)
    )
    genome = Genome(load_search_spec(path), 4)
    assert genome.labels == ["base.weight[0]", "a.weight[0]", "b.weight[0]"]
    # slerp: t is shared, written at the top level.
    path = tmp_path / "slerp" / "spec.toml"
    path.parent.mkdir()
    (path.parent / "prose.txt").write_text("text")
    path.write_text(
        '[merge]\nmethod = "slerp"\nbase = "a"\n\n[models.a]\nsource = "a"\n\n'
        '[models.b]\nsource = "b"\n\n[parameters]\nt = [0, 1]\n\n'
        "[search]\nlayer_groups = 2\nsmooth = true\nbudget = 8\n"
        '[[search.objective]]\nkind = "perplexity"\ntext = "prose.txt"\n'
    )
    genome = Genome(load_search_spec(path), 4)
    assert genome.labels == ["t[0]", "t[1]"]
    assert genome.x0 == [0.0, 1.0]
    assert genome.recipe_for([0.3, 0.6]).parameters["t"] == [0.3, 0.6]


def test_more_groups_than_layers_is_an_error(tmp_path: Path) -> None:
    path = write_spec(tmp_path, FAMILY, search="layer_groups = 6\nbudget = 20\n")
    with pytest.raises(UserError) as caught:
        Genome(load_search_spec(path), 4)
    assert caught.value.message == "layer_groups is 6 but the models have 4 layers"
    assert (
        caught.value.where
        == f"{path}:{path.read_text().splitlines().index('layer_groups = 6') + 1}"
    )


def test_the_recipe_is_plain_and_leaves_the_template_alone(tmp_path: Path) -> None:
    genome = _genome(tmp_path, "layer_groups = 4\nbudget = 20\n")
    before = dumps_toml(genome.spec.recipe)
    recipe = genome.recipe_for([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert dumps_toml(genome.spec.recipe) == before
    text = dumps_toml(recipe)
    assert "[search]" not in text
    assert loads_toml(text) == recipe  # the file says exactly these values
    assert layer_values(recipe, "b") == pytest.approx([0.5, 0.6, 0.7, 0.8])
    problems = validate_recipe(recipe, offline=True, hub_cache=False)
    assert not [p for p in problems if p.is_error and "weight" in p.message]


def test_a_random_methods_best_recipe_carries_the_search_seed(tmp_path: Path) -> None:
    """The evaluator merges a random method's candidates with the search's seed (the recipe has
    none), so the written recipe must carry it: `mergetui merge best.toml` makes what was scored."""
    search = "budget = 10\nseed = 7\n"
    dare = Genome(
        load_search_spec(write_spec(tmp_path / "dare", FAMILY, search=search, method="dare_ties")),
        4,
    )
    assert dare.spec.recipe.seed is None
    assert dare.recipe_for(dare.x0).seed == 7
    plain = _genome(tmp_path / "ta", search)
    assert plain.recipe_for(plain.x0).seed is None
