"""Reading a `[search]` table into a `SearchSpec`: every key, number, bound and file checked, each
error located by the recipe reader (`spec.toml:14: ...`), before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe import limits
from mergetui.recipe.methods import METHODS, MethodSpec, ParamSpec
from mergetui.recipe.model import Recipe
from mergetui.recipe.paths import recipe_folder, recipe_path
from mergetui.recipe.reader import KeyPath, RecipeReader, did_you_mean
from mergetui.search.objectives import read_completions, require_lm_eval
from mergetui.search.spec import (
    DEFAULT_BUDGET,
    MAX_BUDGET,
    MAX_FEWSHOT,
    MAX_LAYER_GROUPS,
    MAX_LIMIT,
    MAX_OBJECTIVE_WEIGHT,
    MAX_OBJECTIVES,
    MAX_POPULATION,
    MAX_SEED,
    MAX_TEXT_BYTES,
    OBJECTIVE_KINDS,
    SEARCH_KEYS,
    Objective,
    ObjectiveKind,
    SearchSpec,
    check_sizes,
    search_slots,
    start_setting,
)


def read_search_table(recipe: Recipe, table: Mapping[str, Any]) -> SearchSpec:
    """The spec for `recipe` searched as `table` says (see `spec.search_spec_from_recipe`)."""
    reader = RecipeReader(recipe.source_path, recipe.locations)
    return SearchTableReader(recipe, reader).read(dict(table))


class SearchTableReader:
    """Reads a search table into a SearchSpec, every error located by the recipe reader."""

    def __init__(self, recipe: Recipe, reader: RecipeReader) -> None:
        self.recipe = recipe
        self.reader = reader
        self.folder = recipe_folder(recipe.source_path)

    def fail(self, path: KeyPath, message: str, fix: str | None = None) -> UserError:
        return self.reader.fail(path, message, fix)

    def read(self, table: dict[str, Any]) -> SearchSpec:
        reader = self.reader
        reader.check_keys(table, SEARCH_KEYS, ("search",), "[search]")
        method = self.method()
        parameters = self.parameters(table.get("parameters"), method)
        groups = self.whole(table, "layer_groups", 1, 1, MAX_LAYER_GROUPS)
        smooth = reader.boolean(table.get("smooth", False), ("search", "smooth"))
        bounds = self.bounds(table.get("bounds"), parameters, method)
        budget = self.whole(table, "budget", DEFAULT_BUDGET, 1, MAX_BUDGET)
        population = self.whole(table, "population", None, 2, MAX_POPULATION)
        seed = self.whole(table, "seed", 0, 0, MAX_SEED)
        assert groups is not None and budget is not None and seed is not None
        objectives = self.objectives(table.get("objective"))
        spec = SearchSpec(
            recipe=dataclasses.replace(self.recipe, search=None),
            parameters=parameters,
            layer_groups=groups,
            smooth=smooth,
            bounds=bounds,
            budget=budget,
            population=population,
            seed=seed,
            objectives=objectives,
            source_path=Path(self.recipe.source_path) if self.recipe.source_path else None,
            locations={k: v for k, v in self.recipe.locations.items() if k.startswith("search")},
        )
        check_sizes(spec)
        return spec

    def method(self) -> MethodSpec:
        recipe = self.recipe
        method = METHODS.get(recipe.method)
        if method is None:
            fix = did_you_mean(recipe.method, tuple(METHODS)) or "see docs/methods.md"
            raise self.fail(("merge", "method"), f"unknown merge method '{recipe.method}'", fix)
        if recipe.slices is not None:
            raise self.fail(
                ("slices",),
                "a search needs the recipe's models form (every layer of every model)",
                "list the models under [models.<name>] instead of [[slices]]",
            )
        return method

    def parameters(self, raw: Any, method: MethodSpec) -> tuple[str, ...]:
        path = ("search", "parameters")
        searchable = list(method.searchable_params)
        hint = f"{method.name} can search: {', '.join(searchable)}" if searchable else None
        if raw is None:
            raw = [method.tuned_parameter] if method.tuned_parameter in searchable else []
        if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
            raise self.fail(path, "'search.parameters' must be a list of parameter names", hint)
        if not raw:
            raise self.fail(
                path,
                f"nothing to search: no parameter of {method.name} is named",
                f'add parameters = ["{searchable[0]}"]'
                if searchable
                else f"{method.name} has no number to search; choose another method",
            )
        for index, name in enumerate(raw):
            param = method.param(name)
            if param is None:
                fix = did_you_mean(name, searchable) or hint or "choose another method"
                raise self.fail(path + (index,), f"{method.name} has no parameter '{name}'", fix)
            if param.type != "float":
                raise self.fail(
                    path + (index,),
                    f"'{name}' is {'true/false' if param.type == 'bool' else 'a whole number'}, "
                    "not a number a search can tune",
                    hint,
                )
            if raw.index(name) != index:
                raise self.fail(path + (index,), f"'{name}' is named twice", "name it once")
        names = tuple(raw)
        slots = search_slots(self.recipe, method, names)
        if not slots:
            raise self.fail(
                path,
                "nothing to search: these parameters apply to no model of the recipe",
                "a task vector's weight applies to every model but the base: add a model",
            )
        for name, model in slots:
            start_setting(self.recipe, method, name, model)  # raises for what cannot start it
        return names

    def whole(
        self, table: Mapping[str, Any], key: str, default: int | None, low: int, high: int
    ) -> int | None:
        path = ("search", key)
        value = self.reader.integer(table.get(key), path)
        if value is None:
            return default
        if not low <= value <= high:
            raise self.fail(
                path, f"'search.{key}' is {value}; it must be {low} to {high:,}", f"set {key}"
            )
        return value

    def bounds(
        self, raw: Any, parameters: tuple[str, ...], method: MethodSpec
    ) -> dict[str, tuple[float, float]]:
        table = (
            {} if raw is None else self.reader.table(raw, ("search", "bounds"), "name = [lo, hi]")
        )
        for name in table:
            if name not in parameters:
                raise self.fail(
                    ("search", "bounds", name),
                    f"bounds for '{name}', which is not searched",
                    f"add it to parameters, or remove it (searched: {', '.join(parameters)})",
                )
        result = {}
        for name in parameters:
            param = method.param(name)
            assert param is not None
            if name in table:
                result[name] = self.given_bounds(table[name], param, ("search", "bounds", name))
            else:
                result[name] = self.default_bounds(param)
        return result

    def given_bounds(self, raw: Any, param: ParamSpec, path: KeyPath) -> tuple[float, float]:
        name = f"search.bounds.{param.name}"
        if (
            not isinstance(raw, list)
            or len(raw) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        ):
            raise self.fail(path, f"'{name}' must be two numbers [low, high]", "e.g. [0, 1]")
        low, high = float(raw[0]), float(raw[1])
        if not all(math.isfinite(v) and abs(v) <= limits.MAX_PARAMETER for v in (low, high)):
            raise self.fail(
                path,
                f"'{name}' must be finite numbers within ±{limits.MAX_PARAMETER:g}",
                "e.g. [0, 1]",
            )
        if not low < high:
            raise self.fail(
                path,
                f"'{name}' is [{low:g}, {high:g}]: low must be below high",
                "write [low, high]",
            )
        below = param.minimum is not None and (
            low < param.minimum or (param.exclusive_minimum and low <= param.minimum)
        )
        above = param.maximum is not None and high > param.maximum
        if below or above:
            raise self.fail(
                path,
                f"'{name}' [{low:g}, {high:g}] leaves {param.name}'s range ({_range(param)})",
                "keep the bounds within the parameter's range",
            )
        return (low, high)

    def default_bounds(self, param: ParamSpec) -> tuple[float, float]:
        if param.search_bounds is not None:
            return param.search_bounds
        if param.minimum is not None and param.maximum is not None:
            low = param.minimum + (param.step if param.exclusive_minimum else 0.0)
            return (low, param.maximum)
        raise self.fail(
            ("search", "parameters"),
            f"{param.name} has no range of its own to search",
            f"add bounds = {{ {param.name} = [low, high] }} to [search]",
        )

    def objectives(self, raw: Any) -> tuple[Objective, ...]:
        path = ("search", "objective")
        if raw is None or raw == []:
            raise self.fail(
                ("search",),
                "the search has no objective",
                'add [[search.objective]] with kind = "perplexity" and text = "<file>"',
            )
        if not isinstance(raw, list):
            raise self.fail(path, "'search.objective' must be an array of tables")
        if len(raw) > MAX_OBJECTIVES:
            raise self.fail(path, f"{len(raw)} objectives; at most {MAX_OBJECTIVES} are allowed")
        objectives: list[Objective] = []
        for index, item in enumerate(raw):
            objective = self.objective(item, path + (index,))
            labels = {o.label for o in objectives}
            label, number = objective.label, 2
            while label in labels:
                label, number = f"{objective.label}#{number}", number + 1
            objectives.append(dataclasses.replace(objective, label=label))
        return tuple(objectives)

    def objective(self, raw: Any, path: KeyPath) -> Objective:
        reader = self.reader
        table = reader.table(raw, path, "kind, weight and the kind's keys")
        kind_name = reader.string(table.get("kind"), path + ("kind",), required=True)
        assert kind_name is not None
        kind = OBJECTIVE_KINDS.get(kind_name)
        if kind is None:
            raise self.fail(
                path + ("kind",),
                f"unknown objective kind '{kind_name}'",
                did_you_mean(kind_name, tuple(OBJECTIVE_KINDS))
                or f"kinds: {', '.join(OBJECTIVE_KINDS)}",
            )
        reader.check_keys(table, ("kind", "weight", *kind.keys), path, f"a {kind.name} objective")
        weight = self.objective_weight(table.get("weight", 1.0), path + ("weight",))
        if kind.file_key is not None:
            file = self.objective_file(table, kind, path)
            return Objective(kind.name, f"{kind.name}:{file.name}", weight, path=file)
        return self.lm_eval_objective(table, weight, path)

    def objective_weight(self, raw: Any, path: KeyPath) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise self.fail(path, f"'{self.reader.name(path)}' must be a number, got {raw!r}")
        value = float(raw)
        if not (math.isfinite(value) and 0 < value <= MAX_OBJECTIVE_WEIGHT):
            raise self.fail(
                path,
                f"'{self.reader.name(path)}' is {raw}; it must be above 0 and at most "
                f"{MAX_OBJECTIVE_WEIGHT:g}",
                "weights say how much each objective counts, e.g. 1.0",
            )
        return value

    def objective_file(self, table: Mapping[str, Any], kind: ObjectiveKind, path: KeyPath) -> Path:
        key = kind.file_key
        assert key is not None
        written = self.reader.string(table.get(key), path + (key,), required=True)
        assert written is not None
        file = recipe_path(written, self.folder)
        check_text_file(file, kind.name, self.reader.where(path + (key,)))
        return file

    def lm_eval_objective(
        self, table: Mapping[str, Any], weight: float, path: KeyPath
    ) -> Objective:
        reader = self.reader
        task = reader.string(table.get("task"), path + ("task",), required=True)
        assert task is not None
        task_path = None
        written = reader.string(table.get("task_path"), path + ("task_path",))
        if written is not None:
            task_path = recipe_path(written, self.folder)
            if not task_path.is_dir():
                raise self.fail(
                    path + ("task_path",),
                    f"no folder of lm-eval tasks at {task_path}",
                    "task_path is relative to the spec's folder",
                )
        metric = reader.string(table.get("metric"), path + ("metric",))
        limit = self.bounded(table, "limit", path, 1, MAX_LIMIT)
        fewshot = self.bounded(table, "num_fewshot", path, 0, MAX_FEWSHOT)
        require_lm_eval(reader.where(path + ("kind",)))
        return Objective(
            "lm_eval",
            f"lm_eval:{task}",
            weight,
            task=task,
            task_path=task_path,
            metric=metric,
            limit=limit,
            num_fewshot=fewshot,
        )

    def bounded(
        self, table: Mapping[str, Any], key: str, path: KeyPath, low: int, high: int
    ) -> int | None:
        value = self.reader.integer(table.get(key), path + (key,))
        if value is not None and not low <= value <= high:
            raise self.fail(path + (key,), f"'{key}' is {value}; it must be {low} to {high:,}")
        return value


def _range(param: ParamSpec) -> str:
    low = "-inf" if param.minimum is None else f"{param.minimum:g}"
    high = "inf" if param.maximum is None else f"{param.maximum:g}"
    return f"{'(' if param.exclusive_minimum else '['}{low}, {high}]"


# ----------------------------------------------------------------------------------------------
# Objective files


def check_text_file(file: Path, kind: str, where: str) -> None:
    """A text (or completions) file must be a readable, non-empty UTF-8 file of sane size; a
    completions file, JSON lines of {"prompt", "completion"} strings."""
    shown = str(file)
    try:
        size = file.stat().st_size
        if not file.is_file():
            raise UserError(f"{shown} is not a file", where=where, fix="name a text file")
    except FileNotFoundError:
        raise UserError(
            f"the {kind} file {shown} does not exist",
            where=where,
            fix="check the path: it is relative to the spec's folder",
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read {shown}: {exc.strerror}", where=where) from None
    if size > MAX_TEXT_BYTES:
        raise UserError(
            f"{shown} is {size:,} bytes; objective files are limited to "
            f"{MAX_TEXT_BYTES // (1024 * 1024)} MiB",
            where=where,
            fix="a few thousand tokens score a candidate well: use a shorter file",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{shown} is not UTF-8 text", where=where) from None
    except OSError as exc:
        raise UserError(f"cannot read {shown}: {exc.strerror}", where=where) from None
    if not text.strip():
        raise UserError(f"{shown} is empty", where=where, fix="give it text to score on")
    if kind == "completions":
        try:
            read_completions(file)  # the scorer's own reader: one JSON object a line
        except UserError as exc:
            raise UserError(exc.message, where=f"{where} ({exc.where})", fix=exc.fix) from None
