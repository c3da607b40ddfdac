"""Everything wrong with a recipe that a person can fix, each with its place and the fix.

`validate_recipe` never raises for a bad recipe: it returns every problem it finds, so the CLI can
list them all and the app can mark each key. Errors stop a merge (mergekit would stop too, or the
result would be silently wrong); warnings are worth reading but the merge can run.

The recipe alone is checked first (`check_recipe`: method, models, base, slices, parameters and
their ranges, dtypes; the planner stops at the first of these errors it cannot get past). Model paths are then looked up on
disk (a missing local folder is an error, a Hub id that is not in the local cache a warning).
Unless `offline`, the checkpoints found are opened (headers only) to check that they can be
merged: same architecture, same tensor names and shapes, layer ranges inside the model, and every
required parameter set for every tensor the merge will visit (`validate_models`).
"""

from __future__ import annotations

from pathlib import Path

from mergetui.dtypes import ALIASES, MERGEKIT_NAMES
from mergetui.recipe.limits import MAX_LAYER
from mergetui.recipe.methods import METHODS, MethodSpec
from mergetui.recipe.model import Recipe
from mergetui.recipe.problems import Level, Problem, Problems
from mergetui.recipe.reader import TOKENIZER_KEYWORDS, did_you_mean
from mergetui.recipe.validate_models import check_checkpoints, check_paths
from mergetui.recipe.validate_params import check_parameters, required_coverage
from mergetui.recipe.walk import input_groups


def validate_recipe(
    recipe: Recipe,
    *,
    offline: bool = False,
    base_dir: str | Path | None = None,
    hub_cache: bool = True,
) -> list[Problem]:
    """Every problem found, errors and warnings, in recipe order.

    `base_dir` is where relative model paths start (default: the recipe file's folder, else the
    working directory). With `offline` no checkpoint is opened: only the recipe and the presence
    of its model folders are checked. With `hub_cache` False, Hub ids are not looked up in the
    local Hugging Face cache (nor reported missing from it): `validate --offline` is the recipe alone.
    """
    from mergetui.recipe.paths import folder_of

    folder = folder_of(recipe, base_dir)
    problems, spec = check_recipe(recipe)
    coverage = required_coverage(recipe, spec) if spec is not None else []
    located = check_paths(problems, folder, hub_cache=hub_cache)
    exact = not offline and check_checkpoints(problems, spec, located, folder)
    if not exact:
        for level, where, message, fix in coverage:
            problems.add(level, where, message, fix)
    return problems.items


def check_recipe(recipe: Recipe) -> tuple[Problems, MethodSpec | None]:
    """The checks of the recipe alone, no file looked at: its problems, and its method's spec
    (None when the method is unknown). `make_plan` stops at the first error found here that it
    cannot get past (`Problems.blocking`)."""
    problems = Problems(recipe)
    spec = _check_method(problems)
    _check_dtypes(problems)
    _check_seed(problems)
    _check_models(problems)
    _check_slices(problems)
    _check_base(problems, spec)
    _check_tokenizer(problems)
    if spec is not None:
        _check_inputs(problems, spec)
        check_parameters(problems, spec)
        if spec.random and recipe.seed is None:
            problems.warning(
                "merge.method",
                f"{spec.name} draws at random: each run gives a different model",
                "set seed = <number> under [merge] to make it reproducible",
            )
    return problems, spec


def has_errors(problems: list[Problem]) -> bool:
    return any(p.is_error for p in problems)


# ----------------------------------------------------------------------------------------------
# The recipe alone


def _check_method(problems: Problems) -> MethodSpec | None:
    method = problems.recipe.method
    spec = METHODS.get(method)
    if spec is None:
        hint = did_you_mean(method, list(METHODS))
        problems.error(
            "merge.method",
            f"unknown merge method '{method}'",
            hint or f"use one of: {', '.join(METHODS)}",
            blocks_plan=True,
        )
    return spec


def _check_dtypes(problems: Problems) -> None:
    for key in ("dtype", "out_dtype"):
        value = getattr(problems.recipe, key)
        if value is None:
            continue
        name = value[len("torch.") :] if value.startswith("torch.") else value
        if name in MERGEKIT_NAMES:
            continue
        alias = ALIASES.get(name.lower())
        hint = f"did you mean '{alias}'?" if alias else did_you_mean(name, MERGEKIT_NAMES)
        problems.error(
            f"merge.{key}",
            f"unknown {key} '{value}'",
            hint or f"use one of: {', '.join(MERGEKIT_NAMES)}",
        )


SEED_MAX = 2**32 - 1  # mergekit's --random-seed goes to numpy, which takes 0 to 2**32 - 1


def _check_seed(problems: Problems) -> None:
    seed = problems.recipe.seed
    if seed is not None and not 0 <= seed <= SEED_MAX:
        problems.error(
            "merge.seed",
            f"seed must be a whole number from 0 to {SEED_MAX}; got {seed}",
            "use a smaller seed, e.g. seed = 42",
        )


def _check_models(problems: Problems) -> None:
    recipe = problems.recipe
    if not recipe.models:
        problems.error(
            "models",
            "the recipe has no models",
            "add a [models.<name>] table per model",
            blocks_plan=True,
        )
    seen: dict[str, str] = {}
    for name, entry in recipe.models.items():
        if entry.name != name:
            problems.error(
                f"models.{name}",
                f"model '{name}' carries the name '{entry.name}'",
                "keep the table name and the entry's name the same",
            )
        if not entry.source.strip():
            problems.error(f"models.{name}.source", f"model '{name}' has an empty source")
            continue
        reference = entry.reference
        if reference in seen:
            level: Level = "error" if recipe.slices is None else "warning"
            problems.add(
                level,
                f"models.{name}.source",
                f"models '{seen[reference]}' and '{name}' are the same checkpoint ({reference})",
                f"use one model name for {reference}"
                + ("" if recipe.slices is not None else " (a model cannot be merged with itself)"),
            )
        seen.setdefault(reference, name)
        if recipe.slices is not None and entry.parameters:
            problems.error(
                f"models.{name}.parameters",
                f"model parameters of '{name}' are not used when the recipe has slices",
                "move them into the slice sources (parameters = { ... }) or [parameters]",
            )
    if recipe.slices is not None:
        used = {source.model for s in recipe.slices for source in s.sources}
        used |= {s.base for s in recipe.slices if s.base}
        if recipe.base:
            used.add(recipe.base)
        for name in recipe.models:
            if name not in used:
                problems.warning(
                    f"models.{name}",
                    f"model '{name}' is not used by any slice",
                    "add it to a slice's sources or remove it",
                )


def _unknown_model(problems: Problems, where: str, name: str, role: str) -> None:
    models = list(problems.recipe.models)
    hint = did_you_mean(name, models)
    problems.error(
        where,
        f"{role} '{name}' is not one of the recipe's models",
        hint or (f"use one of: {', '.join(models)}" if models else f"add [models.{name}]"),
        blocks_plan=True,
    )


def _check_slices(problems: Problems) -> None:
    recipe = problems.recipe
    if recipe.slices is None:
        return
    if not recipe.slices:
        problems.error(
            "slices",
            "the recipe has an empty list of slices",
            "add [[slices]] or remove it",
            blocks_plan=True,
        )
    for i, slice_ in enumerate(recipe.slices):
        where = f"slices.{i}"
        if not slice_.sources:
            problems.error(
                where,
                f"slice {i} has no sources",
                'add sources = [{ model = "...", layers = [0, 8] }]',
                blocks_plan=True,
            )
            continue
        for j, source in enumerate(slice_.sources):
            swhere = f"{where}.sources.{j}"
            if source.model not in recipe.models:
                _unknown_model(problems, f"{swhere}.model", source.model, "slice source")
            start, end = source.layer_range
            if start < 0 or end <= start:
                problems.error(
                    f"{swhere}.layers",
                    f"layer range [{start}, {end}] is empty or negative",
                    "write [start, end) with 0 <= start < end",
                    blocks_plan=True,
                )
            elif end > MAX_LAYER:
                problems.error(
                    f"{swhere}.layers",
                    f"layer range [{start}, {end}] goes past layer {MAX_LAYER:,}",
                    "layer numbers count the model's layers (a few hundred at most)",
                    blocks_plan=True,
                )
        lengths = [source.num_layers for source in slice_.sources]
        if len(set(lengths)) > 1:
            problems.error(
                where,
                f"the sources of slice {i} span different numbers of layers ({', '.join(map(str, lengths))})",
                "give every source of a slice a layer range of the same length",
                blocks_plan=True,
            )
        if slice_.base is not None and slice_.base not in recipe.models:
            _unknown_model(problems, f"{where}.base", slice_.base, "slice base model")


def _check_base(problems: Problems, spec: MethodSpec | None) -> None:
    recipe = problems.recipe
    if recipe.base is not None and recipe.base not in recipe.models:
        _unknown_model(problems, "merge.base", recipe.base, "base model")
    if spec is None or spec.base != "ignored":
        return
    bases = [recipe.base] + [s.base for s in recipe.slices or []]
    if any(bases):
        where = "merge.base" if recipe.base else "slices"
        effect = (
            "it is merged as an ordinary input"
            if recipe.slices is None
            else "setting one has no effect"
        )
        problems.warning(
            where,
            f"{spec.name} does not use a base model; {effect}",
            "remove the base setting",
        )


def _check_tokenizer(problems: Problems) -> None:
    recipe = problems.recipe
    if recipe.tokenizer is not None and recipe.tokenizer_source is not None:
        problems.error(
            "merge.tokenizer",
            "both tokenizer_source and [merge.tokenizer] are set",
            "keep one: tokenizer.source does what tokenizer_source does",
        )
    sources = [("merge.tokenizer_source", recipe.tokenizer_source)]
    if recipe.tokenizer is not None:
        sources.append(("merge.tokenizer.source", recipe.tokenizer.get("source")))
    for where, value in sources:
        if value is None:
            continue
        if value == "base" and recipe.base is None:
            problems.error(
                where, "tokenizer source 'base' but the recipe has no base model", "set merge.base"
            )
        elif value not in TOKENIZER_KEYWORDS and value not in recipe.models:
            hint = did_you_mean(value, list(recipe.models) + list(TOKENIZER_KEYWORDS))
            problems.warning(
                where,
                f"tokenizer source '{value}' is not one of the recipe's models; it is read as a path or Hub id",
                hint or "use 'base', 'union' or a model name",
            )


def _count_text(minimum: int, maximum: int | None) -> str:
    if maximum is None:
        return f"at least {minimum}"
    if minimum == maximum:
        return f"exactly {minimum}"
    return f"{minimum} to {maximum}"


def _check_inputs(problems: Problems, spec: MethodSpec) -> None:
    recipe = problems.recipe
    in_slices = recipe.slices is not None
    for where, inputs, base in input_groups(recipe):
        if not inputs:
            continue  # "no models" / "slice i has no sources" already says it, once
        label = f" in {where}" if in_slices else ""
        duplicates = sorted({name for name in inputs if inputs.count(name) > 1})
        for name in duplicates:
            problems.error(
                where, f"model '{name}' is an input twice{label}", "list each model once per slice"
            )
        if spec.base == "ignored":
            base = None
        has_base = base is not None and base in inputs
        if base is not None and not has_base and base in recipe.models:
            problems.error(
                f"{where}.base" if in_slices else "merge.base",
                f"base model '{base}' is not an input{label}",
                f"add '{base}' to the slice's sources" if in_slices else f"add [models.{base}]",
            )
        if spec.base == "required" and base is None:
            names = ", ".join(inputs) or "a model"
            problems.error(
                "merge.base",
                f"{spec.name} needs a base model" + (f"{label}" if in_slices else ""),
                f"set base = one of: {names}",
            )
        count = len(inputs)
        maximum = spec.max_inputs
        if count < spec.min_inputs or (maximum is not None and count > maximum):
            counting = " (the base included)" if spec.base != "ignored" else ""
            extra = spec.inputs_hint if not in_slices else ""
            problems.error(
                where,
                f"{spec.name} takes {_count_text(spec.min_inputs, maximum)} "
                f"model{'s' if (maximum or spec.min_inputs) > 1 else ''}{counting}{label}; "
                f"got {count}{extra}",
                "add or remove models" if not in_slices else "add or remove sources",
            )
        if spec.min_non_base is not None or spec.max_non_base is not None:
            non_base = count - int(has_base)
            low = spec.min_non_base or 0
            high = spec.max_non_base
            if non_base < low or (high is not None and non_base > high):
                problems.error(
                    where,
                    f"{spec.name} takes {_count_text(low, high)} models besides the base{label}; got {non_base}",
                    "add or remove models",
                )
