"""The search spec: the `[search]` table read and checked (located errors, before any model is
loaded), the recipe files keeping the table, and a mergekit-evolve config imported as it is."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from evolve_helpers import LABEL, write_spec

from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.recipe.io import load_recipe, save_recipe
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml
from mergetui.recipe.yaml_export import dumps_yaml
from mergetui.recipe.yaml_import import loads_yaml
from mergetui.search.spec import (
    Objective,
    default_population,
    fitness,
    load_search_spec,
    search_spec_from_recipe,
    with_overrides,
)

FAMILY = {"base": Path("/nowhere/base"), "a": Path("/nowhere/a"), "b": Path("/nowhere/b")}
SEARCH = """parameters = ["weight"]
layer_groups = 2
smooth = true
budget = 12
seed = 5
"""


def test_reads_a_search_table(tmp_path: Path) -> None:
    path = write_spec(tmp_path, FAMILY, search=SEARCH)
    spec = load_search_spec(path)
    assert spec.parameters == ("weight",)
    assert (spec.layer_groups, spec.smooth, spec.budget, spec.seed) == (2, True, 12, 5)
    assert spec.population is None
    assert spec.bounds == {"weight": (0.0, 1.0)}  # weights default [0, 1], as mergekit-evolve
    assert spec.objectives == (
        Objective("perplexity", LABEL, 1.0, path=(tmp_path / "prose.txt").resolve()),
    )
    # The template is the recipe without its table; its values are where the search starts.
    assert spec.recipe.search is None
    assert spec.recipe.models["b"].parameters["weight"] == [0.2, 0.8]
    # A task vector's weight is searched for every model but the base.
    assert spec.slots == (("weight", "a"), ("weight", "b"))
    assert spec.value_count == 4
    assert spec.source_path == path


def test_defaults_and_the_population(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # cma warns that matplotlib is missing (plots only)
        warnings.simplefilter("ignore")
        import cma

    spec = load_search_spec(write_spec(tmp_path, FAMILY, search="budget = 20\n"))
    assert spec.parameters == ("weight",)  # the method's tuned parameter
    assert (spec.layer_groups, spec.smooth, spec.seed) == (1, False, 0)
    for count in (1, 2, 4, 9, 30):
        es = cma.CMAEvolutionStrategy([0.5] * count, 0.2, {"verbose": -9})
        assert default_population(count) == es.popsize
    assert spec.effective_population == default_population(2)


def test_a_yaml_recipe_with_a_search_key(tmp_path: Path) -> None:
    (tmp_path / "prose.txt").write_text("some text to score on", encoding="utf-8")
    path = tmp_path / "spec.yaml"
    path.write_text(
        "merge_method: linear\n"
        "models:\n"
        "  - model: ./a\n    parameters: {weight: 0.4}\n"
        "  - model: ./b\n    parameters: {weight: 0.6}\n"
        "search:\n"
        "  layer_groups: 3\n"
        "  budget: 10\n"
        "  objective:\n"
        "    - kind: perplexity\n      text: prose.txt\n      weight: 2\n"
        "    - kind: perplexity\n      text: prose.txt\n"
    )
    spec = load_search_spec(path)
    assert spec.slots == (("weight", "a"), ("weight", "b"))  # linear: every model has a weight
    assert spec.layer_groups == 3
    assert [(o.label, o.weight) for o in spec.objectives] == [
        ("perplexity:prose.txt", 2.0),
        ("perplexity:prose.txt#2", 1.0),
    ]
    with pytest.raises(UserError) as caught:
        path.write_text(path.read_text().replace("budget: 10", "budget: 1"))
        load_search_spec(path)
    assert caught.value.where == f"{path}:9"


def _error(tmp_path: Path, search: str, **kwargs: str) -> UserError:
    path = write_spec(tmp_path, FAMILY, search=search, **kwargs)
    with pytest.raises(UserError) as caught:
        load_search_spec(path)
    return caught.value


def _line_of(path: Path, text: str, after: str = "[search]") -> int:
    """The line of the first `text` at or after the line holding `after` (or from the top)."""
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if after in line), 0)
    return next(i for i, line in enumerate(lines, start=1) if i > start and text in line)


@pytest.mark.parametrize(
    ("search", "line_text", "message"),
    [
        ('parameters = ["weight"]\nbugdet = 4\n', "bugdet", "unknown key 'search.bugdet'"),
        ("parameters = []\n", "parameters", "nothing to search"),
        ('parameters = ["wieght"]\n', "parameters", "has no parameter 'wieght'"),
        ('parameters = ["normalize"]\n', "parameters", "not a number a search can tune"),
        ('parameters = ["lambda"]\n', "parameters", "no range of its own"),
        ('parameters = ["density"]\nbounds = { density = [0, 1] }\n', "bounds", "leaves density"),
        ("bounds = { weight = [1, 0] }\n", "bounds", "low must be below high"),
        ("bounds = { weight = [0, inf] }\n", "bounds", "finite numbers"),
        ("bounds = { density = [0.1, 1] }\n", "bounds", "not searched"),
        ("layer_groups = 0\n", "layer_groups", "must be 1 to"),
        ("budget = 3\n", "budget", "below the population (6, cma's default for 2 values)"),
        ("budget = 8\npopulation = 9\n", "budget", "below the population (9)"),
        ("seed = -1\n", "seed", "must be 0 to"),
        ("seed = 1.5\n", "seed", "whole number"),
    ],
)
def test_search_errors_are_located(
    tmp_path: Path, search: str, line_text: str, message: str
) -> None:
    error = _error(tmp_path, search)
    assert message in error.message
    assert error.where == f"{tmp_path / 'spec.toml'}:{_line_of(tmp_path / 'spec.toml', line_text)}"


@pytest.mark.parametrize(
    ("objective", "line_text", "message"),
    [
        ('[[search.objective]]\nkind = "perplexty"\n', "perplexty", "unknown objective kind"),
        ('[[search.objective]]\nkind = "perplexity"\ntext = "gone.txt"\n', "gone.txt", "not exist"),
        ('[[search.objective]]\nkind = "perplexity"\ntext = "empty.txt"\n', "empty.txt", "empty"),
        ('[[search.objective]]\nkind = "perplexity"\n', "objective", "objective.0.text' is"),
        (
            '[[search.objective]]\nkind = "perplexity"\ntext = "prose.txt"\nweight = 0\n',
            "weight",
            "above 0",
        ),
        (
            '[[search.objective]]\nkind = "perplexity"\ntext = "prose.txt"\nfile = "x"\n',
            "file",
            "unknown key",
        ),
        ('[[search.objective]]\nkind = "completions"\nfile = "bad.jsonl"\n', "bad.jsonl", "JSON"),
        (
            '[[search.objective]]\nkind = "lm_eval"\ntask = "t"\ntask_path = "none"\n',
            "task_path",
            "no folder of lm-eval tasks",
        ),
        ("", "[search]", "no objective"),
    ],
)
def test_objective_errors_are_located(
    tmp_path: Path, objective: str, line_text: str, message: str
) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "empty.txt").write_text(" \n\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    error = _error(tmp_path, "", objective=objective)
    assert message in error.message
    assert error.where.startswith(
        f"{tmp_path / 'spec.toml'}:{_line_of(tmp_path / 'spec.toml', line_text)}"
    )


def test_the_starting_values_must_be_numbers(tmp_path: Path) -> None:
    path = write_spec(tmp_path, FAMILY, search="")
    text = path.read_text()
    path.write_text(
        text.replace("parameters = { weight = 0.5 }", 'parameters = { weight = "half" }')
    )
    error = _error_of(path)
    assert "not a number or a gradient" in error.message
    assert error.where == f"{path}:{_line_of(path, 'half', after='[merge]')}"
    path.write_text(text.replace("parameters = { weight = 0.5 }\n", ""))
    error = _error_of(path)
    assert error.message == "model 'a' has no weight for the search to start from"
    assert error.where == f"{path}:{_line_of(path, '[models.a]', after='[merge]')}"


def _error_of(path: Path) -> UserError:
    with pytest.raises(UserError) as caught:
        load_search_spec(path)
    return caught.value


def test_a_recipe_without_a_table_or_in_slices_form(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text('[merge]\nmethod = "linear"\n\n[models.a]\nsource = "a"\n')
    assert "no search table" in _error_of(plain).message
    sliced = tmp_path / "sliced.toml"
    sliced.write_text(
        '[merge]\nmethod = "linear"\n\n[models.a]\nsource = "a"\n\n'
        '[[slices]]\nsources = [{ model = "a", layers = [0, 4] }]\n\n'
        '[search]\n[[search.objective]]\nkind = "perplexity"\ntext = "t.txt"\n'
    )
    error = _error_of(sliced)
    assert "models form" in error.message
    assert error.where == f"{sliced}:7"


def test_fitness_is_the_weighted_sum() -> None:
    objectives = (
        Objective("perplexity", "p", 2.0, path=Path("/p")),
        Objective("lm_eval", "l", 0.5, task="t"),
    )
    spec = load_search_spec_like(objectives)
    assert fitness(spec, {"p": 1.5, "l": -0.8}) == pytest.approx(2.0 * 1.5 + 0.5 * -0.8)
    assert math.isinf(fitness(spec, {"p": math.inf, "l": 0.0}))


def load_search_spec_like(objectives: tuple[Objective, ...]):
    import dataclasses

    recipe = loads_toml('[merge]\nmethod = "linear"\n\n[models.a]\nsource = "a"\n')
    recipe.models["a"].parameters["weight"] = 1.0
    (Path("/tmp") / "mergetui-spec-test.txt").write_text("text")
    spec = search_spec_from_recipe(
        recipe,
        {"objective": [{"kind": "perplexity", "text": "/tmp/mergetui-spec-test.txt"}]},
    )
    return dataclasses.replace(spec, objectives=objectives)


def test_overrides_are_checked_like_the_table(tmp_path: Path) -> None:
    spec = load_search_spec(write_spec(tmp_path, FAMILY, search=SEARCH))
    changed = with_overrides(spec, budget=30, population=5, seed=9)
    assert (changed.budget, changed.population, changed.seed) == (30, 5, 9)
    with pytest.raises(UserError, match="below the population"):
        with_overrides(spec, budget=4, population=None, seed=None)
    with pytest.raises(UserError, match="--seed is -2"):
        with_overrides(spec, budget=None, population=None, seed=-2)
    with pytest.raises(UserError, match="--population is 1"):
        with_overrides(spec, budget=None, population=1, seed=None)


def test_search_spec_from_the_app(tmp_path: Path) -> None:
    """The app passes the open recipe and a table; relative files start at the recipe's folder."""
    path = write_spec(tmp_path, FAMILY, search="")
    recipe = load_recipe(path)
    recipe.search = None
    spec = search_spec_from_recipe(
        recipe,
        {
            "parameters": ["weight"],
            "budget": 9,
            "objective": [{"kind": "perplexity", "text": "prose.txt"}],
        },
    )
    assert spec.budget == 9
    assert spec.objectives[0].path == (tmp_path / "prose.txt").resolve()


# ----------------------------------------------------------------------------------------------
# The recipe files keep the table; merge, export and convert leave it out


COMMENTED = """\
[merge]
method = "linear"

[models.a]
source = "a"
parameters = { weight = 0.5 }

# what to search
[search]
parameters = ["weight"]  # per model
layer_groups = 2
bounds = { weight = [0, 1] }

[[search.objective]]
kind = "perplexity"
text = "prose.txt"  # held out
"""


def test_saving_keeps_the_search_table(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(COMMENTED)
    recipe = load_recipe(path)
    assert recipe.search == {
        "parameters": ["weight"],
        "layer_groups": 2,
        "bounds": {"weight": [0, 1]},
        "objective": [{"kind": "perplexity", "text": "prose.txt"}],
    }
    assert recipe.line_of("search.layer_groups") == 11
    recipe.models["a"].parameters["weight"] = 0.25
    save_recipe(recipe, path)
    assert path.read_text() == COMMENTED.replace("weight = 0.5", "weight = 0.25")
    # Written fresh, the table reads back the same.
    assert loads_toml(dumps_toml(recipe)) == recipe
    assert "[[search.objective]]" in dumps_toml(recipe)


def test_yaml_reads_the_key_and_export_and_convert_leave_it_out(tmp_path: Path) -> None:
    recipe = loads_toml(COMMENTED)
    text = dumps_yaml(recipe)
    assert "search" not in text  # mergekit-yaml merges; the search is mergetui's
    assert loads_yaml(text + "search:\n  layer_groups: 3\n").search == {"layer_groups": 3}
    source = tmp_path / "r.toml"
    source.write_text(COMMENTED)
    assert main(["convert", str(source), str(tmp_path / "r.yaml")]) == 0
    assert main(["convert", str(source), str(tmp_path / "copy.toml")]) == 0
    assert load_recipe(tmp_path / "copy.toml").search is None
    assert load_recipe(tmp_path / "r.yaml").search is None


def test_a_merge_of_a_spec_just_merges(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    from mergetui.merge.output import MERGEKIT_FILE, RECIPE_FILE

    path = write_spec(tmp_path, llama_family, search=SEARCH)
    out = tmp_path / "merged"
    assert main(["merge", str(path), "--out", str(out)]) == 0
    copy = load_recipe(out / RECIPE_FILE)
    assert copy.search is None and "search" not in (out / RECIPE_FILE).read_text()
    assert "search" not in (out / MERGEKIT_FILE).read_text()
    assert copy.models["b"].parameters["weight"] == [0.2, 0.8]


# ----------------------------------------------------------------------------------------------
# mergekit-evolve configs


EVOLVE = """\
genome:
  models:
    - {a}
    - {b}
  merge_method: ties
  base_model: {base}
  layer_granularity: 2
tasks:
  - name: my_task
    weight: 2.0
  - name: other_task
    metric: "acc_norm,none"
limit: 50
num_fewshot: 0
"""


def _evolve(tmp_path: Path, family: dict[str, Path], text: str = EVOLVE) -> Path:
    """The config, its models linked under their names (mergekit names models by folder)."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name, folder in family.items():
        if not (models / name).exists():
            (models / name).symlink_to(folder)
    path = tmp_path / "evolve.yaml"
    path.write_text(text.format(**{name: f"models/{name}" for name in family}))
    return path


def test_a_mergekit_evolve_config_as_it_is(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    import yaml
    from mergekit.evo.config import EvolMergeConfiguration

    path = _evolve(tmp_path, llama_family)
    EvolMergeConfiguration.model_validate(yaml.safe_load(path.read_text()))  # mergekit's own
    spec = load_search_spec(path)
    assert spec.recipe.method == "ties"
    assert spec.recipe.base == "base"
    assert spec.parameters == ("weight", "density")
    assert spec.layer_groups == 2  # 4 layers, 2 per group
    assert spec.smooth is False
    assert spec.bounds == {"weight": (0.0, 1.0), "density": (0.05, 1.0)}
    assert spec.budget == 100  # mergekit-evolve's --max-fevals
    assert spec.recipe.parameters == {"normalize": True}  # mergekit-evolve's for ties
    # mergekit's initial genotype: weights 1/N, densities 1.
    assert spec.recipe.models["a"].parameters == {"weight": 0.5, "density": 1.0}
    assert spec.slots == (
        ("weight", "a"),
        ("weight", "b"),
        ("density", "a"),
        ("density", "b"),
    )
    assert [
        (o.kind, o.label, o.weight, o.metric, o.limit, o.num_fewshot) for o in spec.objectives
    ] == [
        ("lm_eval", "lm_eval:my_task", 2.0, "acc,none", 50, 0),
        ("lm_eval", "lm_eval:other_task", 1.0, "acc_norm,none", 50, 0),
    ]


@pytest.mark.parametrize(
    ("change", "message", "key"),
    [
        (("layer_granularity: 2", "layer_granularity: 3"), "does not divide", "layer_granularity"),
        (
            ("merge_method: ties", "merge_method: karcher"),
            "does not search 'karcher'",
            "merge_method",
        ),
        (("  layer_granularity: 2", "  filters: [mlp]"), "filters", "filters"),
        (("limit: 50", "random_init: true"), "'random_init: true'", "random_init"),
        (("limit: 50", "apply_chat_template: true"), "chat template", "apply_chat_template"),
        (("  base_model: {base}\n", ""), "needs a base_model", "genome"),
        (("num_fewshot: 0", "tasks_x: 1"), "unknown key", "tasks_x"),
    ],
)
def test_evolve_config_errors(
    tmp_path: Path, llama_family: dict[str, Path], change: tuple[str, str], message: str, key: str
) -> None:
    path = _evolve(tmp_path, llama_family, EVOLVE.replace(*change))
    error = _error_of(path)
    assert message in error.message
    line = _line_of(path, f"{key}:", after="genome:")
    assert error.where == f"{path}:{line}"


def test_evolve_slerp_takes_two_models(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    text = "genome:\n  models: [{a}, {b}]\n  merge_method: slerp\ntasks: [my_task]\n"
    spec = load_search_spec(_evolve(tmp_path, llama_family, text))
    assert spec.slots == (("t", None),)
    assert spec.recipe.base == "a" and spec.recipe.parameters == {"t": 0.5}
    three = "genome:\n  models: [{a}, {b}, {base}]\n  merge_method: slerp\ntasks: [my_task]\n"
    assert "exactly two" in _error_of(_evolve(tmp_path, llama_family, three)).message


def test_where_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, FAMILY, search=SEARCH)
    spec = load_search_spec(path)
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+", spec.where("search.layer_groups"))


def test_validate_checks_the_search_table(
    tmp_path: Path, llama_family: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    family = {"base": llama_family["base"], "a": llama_family["a"], "b": llama_family["b"]}
    good = write_spec(tmp_path / "good", family, search=SEARCH)
    assert main(["validate", "--offline", str(good)]) == 0
    assert f"{good}: ok" in capsys.readouterr().out
    bad = write_spec(tmp_path / "bad", family, search="layer_groups = 0\n")
    assert main(["validate", "--offline", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:{_line_of(bad, 'layer_groups')}: 'search.layer_groups' is 0" in out
    assert "fix: set layer_groups" in out
    # As `mergetui evolve` checks it: the objective's text file must exist (none is written).
    (tmp_path / "good" / "prose.txt").unlink()
    assert main(["validate", "--offline", str(good)]) == 1
    assert "prose.txt does not exist" in capsys.readouterr().out
