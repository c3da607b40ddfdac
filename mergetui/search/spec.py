"""The search spec: a recipe's `[search]` table (or a mergekit-evolve config) read and checked.

Every number, parameter, bound and objective is checked when the spec is read (the table by
`spec_table`, a mergekit-evolve config by `evolve_config`), before any model is loaded, with the
recipe reader's located errors (`spec.toml:14: ...`). What is checked later, once the checkpoints'
headers are read (`loop.run_search`): the layer groups against the layer count, and that the models
can be merged at all (the validator and the planner).

The recipe's own values are CMA-ES's initial mean; the search changes only the parameters it names.
A per-model parameter is searched for every model it applies to (a task vector's weight: every model
but the base), a shared one once; each `layer_groups` times along the depth.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe import limits
from mergetui.recipe.methods import METHODS, MethodSpec
from mergetui.recipe.model import Recipe

SEARCH_KEYS = (
    "parameters",
    "layer_groups",
    "smooth",
    "bounds",
    "budget",
    "population",
    "seed",
    "objective",
)
DEFAULT_BUDGET = 48
MAX_BUDGET = 100_000
MAX_POPULATION = 10_000
# CMA-ES keeps a covariance matrix of values x values: a few thousand is already slow.
MAX_VALUES = 2_000
MAX_LAYER_GROUPS = limits.MAX_ENTRIES
MAX_SEED = 2**32 - 2  # cma's generator takes seeds below 2**32; one is added (0 means "random")
MAX_OBJECTIVES = 64
MAX_OBJECTIVE_WEIGHT = 1e6
# A calibration text or completions file: real ones are kilobytes to a few megabytes.
MAX_TEXT_BYTES = 64 * 1024 * 1024
MAX_LIMIT = 10_000_000
MAX_FEWSHOT = 100


@dataclass(frozen=True)
class ObjectiveKind:
    """What one kind of objective takes, and which way its score is better."""

    name: str
    keys: tuple[str, ...]  # besides kind and weight
    file_key: str | None  # the key naming its file, relative to the spec
    what: str


OBJECTIVE_KINDS: dict[str, ObjectiveKind] = {
    k.name: k
    for k in (
        ObjectiveKind("perplexity", ("text",), "text", "mean log-perplexity on a text"),
        ObjectiveKind(
            "completions",
            ("file",),
            "file",
            "mean negative log-likelihood of each completion given its prompt (JSONL)",
        ),
        ObjectiveKind(
            "lm_eval",
            ("task", "task_path", "metric", "limit", "num_fewshot"),
            None,
            "an lm-eval task's metric, negated when higher is better (accuracy)",
        ),
    )
}


@dataclass(frozen=True)
class Objective:
    """One thing a candidate is scored on. `label` names it in events, files and the app."""

    kind: str
    label: str
    weight: float
    path: Path | None = None  # the text or JSONL file (absolute)
    task: str | None = None  # lm_eval: the task's name
    task_path: Path | None = None  # lm_eval: a folder of custom task YAMLs
    metric: str | None = None  # lm_eval: e.g. "acc,none" (None: the task's first)
    limit: int | None = None  # lm_eval: examples per task
    num_fewshot: int | None = None  # lm_eval


@dataclass(frozen=True)
class SearchSpec:
    """A checked search: the template recipe (no search table; its values start the search) and
    what to search, how long, scored on what."""

    recipe: Recipe
    parameters: tuple[str, ...]
    layer_groups: int
    smooth: bool
    bounds: dict[str, tuple[float, float]]
    budget: int
    population: int | None
    seed: int
    objectives: tuple[Objective, ...]
    source_path: Path | None
    # Where each `search.*` key was written (dotted path -> line), for errors found later.
    locations: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def method(self) -> MethodSpec:
        return METHODS[self.recipe.method]

    @property
    def slots(self) -> tuple[tuple[str, str | None], ...]:
        """(parameter, model) for every searched series of values; model None when shared."""
        return search_slots(self.recipe, self.method, self.parameters)

    @property
    def value_count(self) -> int:
        """How many numbers CMA-ES searches: a value per slot and layer group."""
        return len(self.slots) * self.layer_groups

    @property
    def effective_population(self) -> int:
        """Candidates per generation: the spec's, else cma's default for this many values."""
        return self.population or default_population(self.value_count)

    def where(self, key: str = "search") -> str:
        """`file:line` of a `search.*` key (or of its nearest written parent)."""
        name = str(self.source_path) if self.source_path else "<recipe>"
        parts = key.split(".")
        while parts:
            line = self.locations.get(".".join(parts))
            if line is not None:
                return f"{name}:{line}"
            parts.pop()
        return name


def default_population(value_count: int) -> int:
    """cma's default population (`4 + 3 * ln(N)`), so the budget check knows it before cma runs."""
    return 4 + int(3 * math.log(max(1, value_count)))


def fitness(spec: SearchSpec, scores: Mapping[str, float]) -> float:
    """The weighted sum of the objectives' scores, lower is better. Every score is already
    oriented so (`objectives`: an lm-eval accuracy comes negated). Not finite when a score is
    not (a broken candidate; the loop ranks it last)."""
    return sum(o.weight * float(scores[o.label]) for o in spec.objectives)


def search_slots(
    recipe: Recipe, method: MethodSpec, parameters: tuple[str, ...]
) -> tuple[tuple[str, str | None], ...]:
    """(parameter, model or None) in genome order: per parameter, the models it applies to (all
    inputs; not the base for a `non_base` one), or one shared slot."""
    slots: list[tuple[str, str | None]] = []
    for name in parameters:
        param = method.param(name)
        if param is None:
            continue
        if not param.per_model:
            slots.append((name, None))
            continue
        for model in recipe.models:
            if model == recipe.base and param.scope == "non_base":
                continue
            slots.append((name, model))
    return tuple(slots)


def start_setting(recipe: Recipe, method: MethodSpec, name: str, model: str | None) -> Any:
    """The setting a searched series starts from: the model's own, else the recipe-wide one
    (for a per-model parameter), else the method's default. A number or a gradient of numbers;
    UserError for {filter, value} entries (the search writes one value per layer) or none at all."""
    param = method.param(name)
    assert param is not None
    levels = [(f"models.{model}.parameters", recipe.models[model].parameters)] if model else []
    levels.append(("parameters", recipe.parameters))
    for where, parameters in levels:
        if name not in parameters:
            continue
        value = parameters[name]
        numbers = value if isinstance(value, list) else [value]
        if not numbers or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in numbers
        ):
            raise UserError(
                f"the search starts from {where}.{name}, which is not a number or a gradient",
                where=_located(recipe, f"{where}.{name}"),
                fix=f"write {name} as a number (or a list of numbers) to start from",
            )
        return value
    if param.required or param.default is None:
        owner = f"model '{model}'" if model else "the recipe"
        raise UserError(
            f"{owner} has no {name} for the search to start from",
            where=_located(recipe, f"models.{model}" if model else "parameters"),
            fix=f"set {name} = <number> in [{'models.' + model + '.parameters' if model else 'parameters'}]",
        )
    return param.default


def _located(recipe: Recipe, path: str) -> str:
    name = recipe.source_path or "<recipe>"
    line = recipe.line_of(path)
    return f"{name}:{line}" if line is not None else f"{name} ({path})"


# ----------------------------------------------------------------------------------------------
# Reading


def load_search_spec(path: str | os.PathLike[str]) -> SearchSpec:
    """A spec file: a recipe (TOML or mergekit YAML) with a `search` table, or a mergekit-evolve
    config (`genome:` + `tasks:`) as it is. UserError, located, for anything wrong in it."""
    from mergetui.recipe.io import loads_recipe, read_recipe_text, recipe_format

    fmt = recipe_format(path)
    source = str(path)
    text = read_recipe_text(path)
    if fmt == "yaml":
        from mergetui.recipe.yaml_syntax import yaml_compose

        data, locations = yaml_compose(text, source)
        if isinstance(data, dict) and "genome" in data:
            from mergetui.search.evolve_config import spec_from_evolve_config

            return spec_from_evolve_config(data, locations, source)
    recipe = loads_recipe(text, fmt, source)
    if recipe.search is None:
        raise UserError(
            "the recipe has no search table",
            where=source,
            fix="add [search] and [[search.objective]] (docs/evolve.md), "
            "or pass a mergekit-evolve config",
        )
    return search_spec_from_recipe(recipe, recipe.search)


def search_spec_from_recipe(recipe: Recipe, table: Mapping[str, Any]) -> SearchSpec:
    """The spec for `recipe` searched as `table` (a `[search]` table's data) says. Relative files
    are read from the recipe's folder (the working folder for a recipe with no file)."""
    from mergetui.search.spec_table import read_search_table

    return read_search_table(recipe, table)


def check_sizes(spec: SearchSpec) -> None:
    """The number of searched values and the budget against the population."""
    if spec.value_count > MAX_VALUES:
        raise UserError(
            f"the search has {spec.value_count:,} values ({len(spec.slots)} series x "
            f"{spec.layer_groups} layer groups); at most {MAX_VALUES:,}",
            where=spec.where("search.layer_groups"),
            fix="use fewer layer groups or parameters",
        )
    population = spec.effective_population
    if spec.budget < population:
        given = "" if spec.population else f", cma's default for {spec.value_count} values"
        raise UserError(
            f"the budget ({spec.budget}) is below the population ({population}{given}): "
            "not one generation would finish",
            where=spec.where("search.budget"),
            fix=f"set budget to at least {population}, or a smaller population",
        )


def with_overrides(
    spec: SearchSpec, *, budget: int | None, population: int | None, seed: int | None
) -> SearchSpec:
    """The spec with the command's (or the app's) budget, population and seed, checked alike."""
    checks = (
        ("budget", budget, 1, MAX_BUDGET),
        ("population", population, 2, MAX_POPULATION),
        ("seed", seed, 0, MAX_SEED),
    )
    for name, value, low, high in checks:
        if value is not None and not low <= value <= high:
            raise UserError(
                f"--{name} is {value}; it must be {low} to {high:,}", fix=f"pass another --{name}"
            )
    changed = dataclasses.replace(
        spec,
        budget=spec.budget if budget is None else budget,
        population=spec.population if population is None else population,
        seed=spec.seed if seed is None else seed,
    )
    try:
        check_sizes(changed)
    except UserError as exc:
        given = "--budget" if budget is not None else "--population" if population else None
        if given is None:
            raise
        raise UserError(exc.message, where=given, fix=exc.fix) from None
    return changed
