"""A mergekit-evolve config (`genome:` + `tasks:`, mergekit 0.1.5's `evo/config.py`) as a search.

The genome becomes the template recipe and its search, as mergekit-evolve builds them
(`evo/genome.py`): the method's searched parameters (`weight`; `density` too for ties and dare_ties;
`t` for slerp), starting where mergekit's initial genotype starts (weights 1/N, densities 1, slerp
halfway), `layer_granularity` layers per group (0: one group), `smooth`, `normalize` (mergekit's
default: on for linear, ties and dare_ties) and `allow_negative_weights` (weights in [-1, 1] instead
of [0, 1]). Each task is an `lm_eval` objective with its weight and metric, and the config's `limit`
and `num_fewshot`. `budget` defaults to mergekit-evolve's `--max-fevals` (100).

What mergetui does differently, and says so rather than guess: `filters` (a value set per tensor
name), `random_init`, `shuffle`, and `apply_chat_template` / `fewshot_as_multiturn` set to true
(mergekit's default; the lm_eval objective scores without a chat template) are refused; slerp takes
exactly two models (mergekit picks the two heaviest of N per group). mergetui's own key `task_search_path` (mergekit takes it on its command
line, `--task-search-path`) names a folder of custom lm-eval tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergetui.recipe.methods import METHODS
from mergetui.recipe.model import Recipe
from mergetui.recipe.paths import locate_model, recipe_folder, recipe_path
from mergetui.recipe.reader import KeyPath, RecipeReader
from mergetui.recipe.yaml_import import recipe_from_config
from mergetui.search.objectives import require_lm_eval
from mergetui.search.spec import (
    MAX_FEWSHOT,
    MAX_LIMIT,
    Objective,
    SearchSpec,
    check_sizes,
    search_slots,
)

# mergekit-evolve's METHOD_PARAM_MAPS: the methods a genome may name and what it searches.
GENOME_PARAMETERS = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}
# mergekit-evolve's `normalize: null`: on for these methods.
NORMALIZED_BY_DEFAULT = ("ties", "dare_ties", "linear")
EVOLVE_BUDGET = 100  # mergekit-evolve --max-fevals
TOP_KEYS = (
    "genome",
    "tasks",
    "limit",
    "num_fewshot",
    "shuffle",
    "random_init",
    "apply_chat_template",
    "fewshot_as_multiturn",
    "task_search_path",
)
GENOME_KEYS = (
    "models",
    "merge_method",
    "base_model",
    "tokenizer_source",
    "layer_granularity",
    "normalize",
    "allow_negative_weights",
    "filters",
    "smooth",
)
TASK_KEYS = ("name", "weight", "metric")
DEFAULT_METRIC = "acc,none"  # mergekit-evolve's TaskConfiguration


def spec_from_evolve_config(
    config: dict[str, Any], locations: dict[str, int], source: str
) -> SearchSpec:
    """The search a mergekit-evolve config describes. Reads the first model's config for its layer
    count (no weights); UserError, located in the file, for what mergetui cannot do as mergekit."""
    reader = RecipeReader(source, locations)
    reader.check_keys(config, TOP_KEYS, (), "a mergekit-evolve config")
    for key in ("random_init", "shuffle"):
        if reader.boolean(config.get(key, False), (key,)):
            raise reader.fail(
                (key,),
                f"'{key}: true' is not supported",
                "remove it: the search starts from the genome's values"
                if key == "random_init"
                else "remove it: lm-eval's own document order is used",
            )
    for key in ("apply_chat_template", "fewshot_as_multiturn"):
        if reader.boolean(config.get(key, False), (key,)):
            raise reader.fail(
                (key,),
                f"'{key}: true' is not supported: the lm_eval objective scores the task as "
                "lm-eval defines it, without a chat template",
                f"set {key}: false (mergekit-evolve's default is true)",
            )
    genome = reader.table(config.get("genome"), ("genome",), "models, merge_method, ...")
    reader.check_keys(genome, GENOME_KEYS, ("genome",), "the genome")
    method = reader.string(genome.get("merge_method"), ("genome", "merge_method"), required=True)
    assert method is not None
    if method not in GENOME_PARAMETERS:
        raise reader.fail(
            ("genome", "merge_method"),
            f"mergekit-evolve does not search '{method}'",
            f"use one of {', '.join(GENOME_PARAMETERS)}, or write a recipe with [search]",
        )
    if genome.get("filters"):
        raise reader.fail(
            ("genome", "filters"),
            "genome filters (values per tensor name) are not supported",
            "remove filters: the search tunes one value per model, layer group and parameter",
        )
    smooth = reader.boolean(genome.get("smooth", False), ("genome", "smooth"))
    recipe = _template(genome, method, reader, locations, source)
    parameters = GENOME_PARAMETERS[method]
    negative = reader.boolean(
        genome.get("allow_negative_weights", False), ("genome", "allow_negative_weights")
    )
    bounds = {name: _bounds(method, name, negative) for name in parameters}
    genome_line = locations.get("genome")
    where = {
        "search": genome_line,
        "search.parameters": locations.get("genome.merge_method", genome_line),
        "search.layer_groups": locations.get("genome.layer_granularity", genome_line),
        "search.budget": genome_line,
    }
    spec = SearchSpec(
        recipe=recipe,
        parameters=parameters,
        layer_groups=_layer_groups(genome, recipe, reader),
        smooth=smooth and method != "slerp",
        bounds=bounds,
        budget=EVOLVE_BUDGET,
        population=None,
        seed=0,
        objectives=_objectives(config, reader, source),
        source_path=Path(source),
        locations={key: line for key, line in where.items() if line is not None},
    )
    check_sizes(spec)
    return spec


def _bounds(method: str, name: str, negative: bool) -> tuple[float, float]:
    """mergekit-evolve takes |weight| unless negative weights are allowed; densities are clamped
    into [0, 1] (mergetui: at least one step, since a density of 0 keeps nothing); t is in [0, 1]."""
    param = METHODS[method].param(name)
    assert param is not None
    if name == "weight":
        return (-1.0, 1.0) if negative else (0.0, 1.0)
    low = (param.minimum or 0.0) + (param.step if param.exclusive_minimum else 0.0)
    return (low, param.maximum if param.maximum is not None else 1.0)


def _template(
    genome: dict[str, Any],
    method: str,
    reader: RecipeReader,
    locations: dict[str, int],
    source: str,
) -> Recipe:
    """The genome as a mergekit config at mergekit's initial genotype, read as a recipe."""
    models = genome.get("models")
    if not isinstance(models, list) or not models:
        raise reader.fail(("genome", "models"), "the genome needs a list of models")
    spec = METHODS[method]
    base = genome.get("base_model")
    if spec.base == "required" and base is None and method != "slerp":
        raise reader.fail(
            ("genome",), f"{method} needs a base_model", "add base_model: <the shared ancestor>"
        )
    config: dict[str, Any] = {"merge_method": method}
    if method == "slerp":
        if len(models) != 2:
            raise reader.fail(
                ("genome", "models"),
                f"slerp takes exactly two models here, not {len(models)}",
                "list two models (mergekit-evolve picks the two heaviest per group; mergetui "
                "searches t between two)",
            )
        config["models"] = [{"model": model} for model in models]
        config["base_model"] = base if base is not None else models[0]
        config["parameters"] = {"t": 0.5}
    else:
        start = {"weight": 1 / len(models)}
        if "density" in GENOME_PARAMETERS[method]:
            start["density"] = 1.0
        config["models"] = [{"model": model, "parameters": dict(start)} for model in models]
        if base is not None:
            config["base_model"] = base
        normalize = genome.get("normalize")
        if normalize is None:
            normalize = method in NORMALIZED_BY_DEFAULT
        config["parameters"] = {"normalize": reader.boolean(normalize, ("genome", "normalize"))}
    if genome.get("tokenizer_source") is not None:
        config["tokenizer_source"] = genome["tokenizer_source"]
    inner = {
        key[len("genome.") :]: line for key, line in locations.items() if key.startswith("genome.")
    }
    recipe = recipe_from_config(config, inner, source)
    if not search_slots(recipe, spec, GENOME_PARAMETERS[method]):
        raise reader.fail(
            ("genome", "models"), "nothing to search: every model is the base", "add models"
        )
    return recipe


def _layer_groups(genome: dict[str, Any], recipe: Recipe, reader: RecipeReader) -> int:
    """`layer_granularity` layers per group, as mergekit: 0 is one group, else it must divide the
    layer count (read from the first model's config; no weights are loaded)."""
    path: KeyPath = ("genome", "layer_granularity")
    granularity = reader.integer(genome.get("layer_granularity", 0), path)
    assert granularity is not None
    if granularity < 0:
        raise reader.fail(path, "'layer_granularity' must be 0 or more")
    if granularity == 0:
        return 1
    from mergetui.checkpoints.inspect import open_checkpoint

    name, entry = next(iter(recipe.models.items()))
    found = locate_model(entry.source, entry.revision, recipe_folder(recipe.source_path))
    if found is None:
        raise reader.fail(
            ("genome", "models", 0),
            f"model '{entry.source}' is not on this machine, so its layers cannot be counted",
            "download it first (mergetui pull REPO_ID) or point at a local folder",
        )
    layers = open_checkpoint(found[0]).num_layers
    if layers % granularity or granularity > layers:
        raise reader.fail(
            path,
            f"layer_granularity {granularity} does not divide {name}'s {layers} layers",
            "use a divisor of the layer count (mergekit-evolve requires one too)",
        )
    return layers // granularity


def _objectives(config: dict[str, Any], reader: RecipeReader, source: str) -> tuple[Objective, ...]:
    tasks = config.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise reader.fail(("tasks",), "the config needs a list of tasks", "add tasks: [<task>]")
    limit = reader.integer(config.get("limit"), ("limit",))
    fewshot = reader.integer(config.get("num_fewshot"), ("num_fewshot",))
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise reader.fail(("limit",), f"'limit' is {limit}; it must be 1 to {MAX_LIMIT:,}")
    if fewshot is not None and not 0 <= fewshot <= MAX_FEWSHOT:
        raise reader.fail(("num_fewshot",), f"'num_fewshot' must be 0 to {MAX_FEWSHOT}")
    task_path = None
    written = reader.string(config.get("task_search_path"), ("task_search_path",))
    if written is not None:
        task_path = recipe_path(written, recipe_folder(source))
        if not task_path.is_dir():
            raise reader.fail(("task_search_path",), f"no folder of lm-eval tasks at {task_path}")
    require_lm_eval(reader.where(("tasks",)))
    objectives: list[Objective] = []
    for index, raw in enumerate(tasks):
        path: KeyPath = ("tasks", index)
        item = {"name": raw} if isinstance(raw, str) else reader.table(raw, path, "name, weight")
        reader.check_keys(item, TASK_KEYS, path, "a task")
        name = reader.string(item.get("name"), path + ("name",), required=True)
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise reader.fail(path + ("weight",), "a task's weight must be a number above 0")
        label, number = f"lm_eval:{name}", 2
        while label in {o.label for o in objectives}:
            label, number = f"lm_eval:{name}#{number}", number + 1
        objectives.append(
            Objective(
                "lm_eval",
                label,
                float(weight),
                task=name,
                task_path=task_path,
                metric=reader.string(item.get("metric"), path + ("metric",)) or DEFAULT_METRIC,
                limit=limit,
                num_fewshot=fewshot,
            )
        )
    return tuple(objectives)
