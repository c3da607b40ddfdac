"""Everything wrong with a recipe that a person can fix, each with its place and the fix.

`validate_recipe` never raises for a bad recipe: it returns every problem it finds, so the CLI can
list them all and the app can mark each key. Errors stop a merge (mergekit would stop too, or the
result would be silently wrong); warnings are worth reading but the merge can run.

The recipe alone is checked first (method, models, base, slices, parameters and their ranges,
dtypes). Model paths are then looked up on disk (a missing local folder is an error, a Hub id that
is not in the local cache a warning). Unless `offline`, the checkpoints found are opened (headers
only) to check that they can be merged: same architecture, same tensor names and shapes, layer
ranges inside the model, and every required parameter set for every tensor the merge will visit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mergetui.dtypes import ALIASES, MERGEKIT_NAMES
from mergetui.errors import UserError
from mergetui.recipe.io import TOKENIZER_KEYWORDS, did_you_mean
from mergetui.recipe.limits import MAX_LAYER, MAX_PARAMETER
from mergetui.recipe.methods import METHODS, MethodSpec, ParamSpec, window_fits
from mergetui.recipe.model import Conditional, Parameters, ParamValue, Recipe, Slice
from mergetui.recipe.resolve import (
    MissingParameterError,
    ParameterValueError,
    coerce,
    resolve_tensor_params,
)

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing to fix: how bad, where (dotted recipe path), what, how, and file:line if known."""

    level: Level
    where: str | None
    message: str
    fix: str | None = None
    file: str | None = None
    line: int | None = None

    @property
    def is_error(self) -> bool:
        return self.level == "error"

    @property
    def location(self) -> str:
        """`recipe.toml:12 (models.b.parameters.weight)`, or what part of it is known."""
        place = self.file or ""
        if place and self.line is not None:
            place = f"{place}:{self.line}"
        if self.where:
            place = f"{place} ({self.where})" if place else self.where
        return place or "recipe"


class _Problems:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.items: list[Problem] = []
        self._seen: set[tuple[str, str | None, str]] = set()

    def add(self, level: Level, where: str | None, message: str, fix: str | None = None) -> None:
        key = (level, where, message)
        if key in self._seen:
            return
        self._seen.add(key)
        line = self.recipe.line_of(where) if where else None
        self.items.append(Problem(level, where, message, fix, self.recipe.source_path, line))

    def error(self, where: str | None, message: str, fix: str | None = None) -> None:
        self.add("error", where, message, fix)

    def warning(self, where: str | None, message: str, fix: str | None = None) -> None:
        self.add("warning", where, message, fix)


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

    problems = _Problems(recipe)
    folder = folder_of(recipe, base_dir)

    spec = _check_method(problems)
    _check_dtypes(problems)
    _check_seed(problems)
    _check_models(problems)
    _check_slices(problems)
    _check_base(problems, spec)
    _check_tokenizer(problems, folder)
    coverage: list[tuple[Level, str, str, str]] = []
    if spec is not None:
        _check_inputs(problems, spec)
        _check_parameters(problems, spec)
        coverage = _required_coverage(recipe, spec)
        if spec.random and recipe.seed is None:
            problems.warning(
                "merge.method",
                f"{spec.name} draws at random: each run gives a different model",
                "set seed = <number> under [merge] to make it reproducible",
            )
    located = _check_paths(problems, folder, hub_cache=hub_cache)
    exact = False
    if not offline:
        exact = _check_checkpoints(problems, spec, located)
    if not exact:
        for level, where, message, fix in coverage:
            problems.add(level, where, message, fix)
    return problems.items


def has_errors(problems: list[Problem]) -> bool:
    return any(p.is_error for p in problems)


# ----------------------------------------------------------------------------------------------
# The recipe alone


def _check_method(problems: _Problems) -> MethodSpec | None:
    method = problems.recipe.method
    spec = METHODS.get(method)
    if spec is None:
        hint = did_you_mean(method, list(METHODS))
        problems.error(
            "merge.method",
            f"unknown merge method '{method}'",
            hint or f"use one of: {', '.join(METHODS)}",
        )
    return spec


def _check_dtypes(problems: _Problems) -> None:
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


def _check_seed(problems: _Problems) -> None:
    seed = problems.recipe.seed
    if seed is not None and not 0 <= seed <= SEED_MAX:
        problems.error(
            "merge.seed",
            f"seed must be a whole number from 0 to {SEED_MAX}; got {seed}",
            "use a smaller seed, e.g. seed = 42",
        )


def _check_models(problems: _Problems) -> None:
    recipe = problems.recipe
    if not recipe.models:
        problems.error(
            "models", "the recipe has no models", "add a [models.<name>] table per model"
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


def _unknown_model(problems: _Problems, where: str, name: str, role: str) -> None:
    models = list(problems.recipe.models)
    hint = did_you_mean(name, models)
    problems.error(
        where,
        f"{role} '{name}' is not one of the recipe's models",
        hint or (f"use one of: {', '.join(models)}" if models else f"add [models.{name}]"),
    )


def _check_slices(problems: _Problems) -> None:
    recipe = problems.recipe
    if recipe.slices is None:
        return
    if not recipe.slices:
        problems.error(
            "slices", "the recipe has an empty list of slices", "add [[slices]] or remove it"
        )
    for i, slice_ in enumerate(recipe.slices):
        where = f"slices.{i}"
        if not slice_.sources:
            problems.error(
                where,
                f"slice {i} has no sources",
                'add sources = [{ model = "...", layers = [0, 8] }]',
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
                )
            elif end > MAX_LAYER:
                problems.error(
                    f"{swhere}.layers",
                    f"layer range [{start}, {end}] goes past layer {MAX_LAYER:,}",
                    "layer numbers count the model's layers (a few hundred at most)",
                )
        lengths = [source.num_layers for source in slice_.sources]
        if len(set(lengths)) > 1:
            problems.error(
                where,
                f"the sources of slice {i} span different numbers of layers ({', '.join(map(str, lengths))})",
                "give every source of a slice a layer range of the same length",
            )
        if slice_.base is not None and slice_.base not in recipe.models:
            _unknown_model(problems, f"{where}.base", slice_.base, "slice base model")


def _check_base(problems: _Problems, spec: MethodSpec | None) -> None:
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


def _check_tokenizer(problems: _Problems, folder: Path) -> None:
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


def _input_groups(recipe: Recipe) -> list[tuple[str, list[str], str | None]]:
    """(where, input model names, base) for each output slice, without needing layer counts."""
    if recipe.slices is None:
        return [("models", list(recipe.models), recipe.base)]
    return [
        (f"slices.{i}", [source.model for source in s.sources], s.base or recipe.base)
        for i, s in enumerate(recipe.slices)
    ]


def _count_text(minimum: int, maximum: int | None) -> str:
    if maximum is None:
        return f"at least {minimum}"
    if minimum == maximum:
        return f"exactly {minimum}"
    return f"{minimum} to {maximum}"


def _check_inputs(problems: _Problems, spec: MethodSpec) -> None:
    recipe = problems.recipe
    in_slices = recipe.slices is not None
    for where, inputs, base in _input_groups(recipe):
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


def _levels(recipe: Recipe) -> Iterator[tuple[str, str, Parameters]]:
    """Every parameter table: (path, kind, parameters); kind is top, model, slice or source."""
    yield "parameters", "top", recipe.parameters
    for name, entry in recipe.models.items():
        yield f"models.{name}.parameters", "model", entry.parameters
    for i, slice_ in enumerate(recipe.slices or []):
        yield f"slices.{i}.parameters", "slice", slice_.parameters
        for j, source in enumerate(slice_.sources):
            yield f"slices.{i}.sources.{j}.parameters", "source", source.parameters


def _scalars(value: ParamValue, path: str) -> Iterator[tuple[str, Any]]:
    """Every plain value inside a setting (gradient anchors, filter values), with its path."""
    if isinstance(value, Conditional):
        yield from _scalars(value.value, f"{path}.value")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _scalars(item, f"{path}.{index}")
    else:
        yield path, value


def _range_text(spec: ParamSpec) -> str:
    if spec.minimum is not None and spec.maximum is not None:
        opening = "(" if spec.exclusive_minimum else "["
        return f"in {opening}{spec.minimum:g}, {spec.maximum:g}]"
    if spec.minimum is not None:
        return f"{'>' if spec.exclusive_minimum else '>='} {spec.minimum:g}"
    return f"<= {spec.maximum:g}"


def _out_of_range(spec: ParamSpec, number: float) -> bool:
    if math.isnan(number):
        return True
    if spec.minimum is not None:
        if number < spec.minimum or (spec.exclusive_minimum and number == spec.minimum):
            return True
    return spec.maximum is not None and number > spec.maximum


_RANGE_FIXES = {
    "density": "density is the share of entries kept: 0 < density <= 1 (1 keeps everything)",
    "t": "t runs from 0 (the base) to 1 (the other model)",
}


def _check_parameters(problems: _Problems, spec: MethodSpec) -> None:
    names = [p.name for p in spec.params]
    for path, kind, parameters in _levels(problems.recipe):
        for name, value in parameters.items():
            where = f"{path}.{name}"
            pspec = spec.param(name)
            if pspec is None:
                hint = did_you_mean(name, names)
                problems.warning(
                    where,
                    f"{spec.name} has no parameter '{name}'; it is ignored",
                    hint
                    or (
                        f"{spec.name} takes: {', '.join(names)}"
                        if names
                        else f"{spec.name} takes no parameters"
                    ),
                )
                continue
            if pspec.scope == "shared" and kind in ("model", "source"):
                problems.warning(
                    where,
                    f"'{name}' is one value per tensor for all models; a per-model setting is ignored",
                    "move it to [parameters] (or the slice's parameters)",
                )
                continue
            _check_values(problems, pspec, value, where)


def _check_values(problems: _Problems, pspec: ParamSpec, value: ParamValue, where: str) -> None:
    for path, scalar in _scalars(value, where):
        try:
            number = coerce(scalar, pspec)
        except ParameterValueError as exc:
            problems.error(path, f"{pspec.name}: {exc.message}", exc.fix)
            continue
        if pspec.type == "bool" or number is None:
            continue
        if not math.isfinite(number):
            problems.error(
                path,
                f"{pspec.name} must be a finite number; got {scalar!r}",
                "NaN or infinity makes every merged tensor NaN or infinite; write a number",
            )
            continue
        if (pspec.minimum is not None or pspec.maximum is not None) and _out_of_range(
            pspec, number
        ):
            problems.error(
                path,
                f"{pspec.name} must be {_range_text(pspec)}; got {scalar!r}",
                _RANGE_FIXES.get(pspec.name, f"use a value {_range_text(pspec)}"),
            )
        elif abs(number) > MAX_PARAMETER:
            problems.error(
                path,
                f"{pspec.name} must be between {-MAX_PARAMETER:g} and {MAX_PARAMETER:g}; "
                f"got {scalar!r}",
                "real weights and scales are near 1; values this large overflow the output",
            )


def _sets(value: ParamValue) -> bool:
    return not (isinstance(value, (list, tuple)) and not value)


def _covers_everything(value: ParamValue) -> bool:
    """Whether a setting gives every tensor a value (no filter that might leave some out)."""
    entries = [value] if isinstance(value, Conditional) else value
    if not isinstance(entries, (list, tuple)):
        return True
    if all(not isinstance(e, Conditional) for e in entries):
        return bool(entries)
    return any(
        isinstance(e, Conditional) and e.filter in (None, "*") and _sets(e.value) for e in entries
    )


def _filters(value: ParamValue) -> list[str]:
    entries = [value] if isinstance(value, Conditional) else value
    if not isinstance(entries, (list, tuple)):
        return []
    return [e.filter for e in entries if isinstance(e, Conditional) and e.filter not in (None, "*")]


def _required_coverage(recipe: Recipe, spec: MethodSpec) -> list[tuple[Level, str, str, str]]:
    """Required parameters left unset, judged from the recipe alone.

    Without checkpoints the tensor names are unknown, so a setting made only of filters is a
    warning (some tensors may get no value); with checkpoints `_check_checkpoints` decides exactly.
    """
    found: list[tuple[Level, str, str, str]] = []
    in_slices = recipe.slices is not None
    for where, inputs, base in _input_groups(recipe):
        slice_ = recipe.slices[int(where.split(".")[1])] if in_slices else Slice(sources=[])
        for pspec in spec.params:
            if not pspec.required:
                continue
            if pspec.scope == "shared":
                chains = [(None, [slice_.parameters, recipe.parameters])]
            else:
                effective_base = None if spec.base == "ignored" else base
                chains = []
                for model in dict.fromkeys(inputs):
                    if model == effective_base and pspec.scope == "non_base":
                        continue
                    own = (
                        [s.parameters for s in slice_.sources if s.model == model]
                        if in_slices
                        else [recipe.models[model].parameters]
                        if model in recipe.models
                        else []
                    )
                    chains.append((model, own + [slice_.parameters, recipe.parameters]))
            for model, chain in chains:
                values = [level[pspec.name] for level in chain if pspec.name in level]
                if model is None:
                    target = (
                        f"{where}.parameters.{pspec.name}"
                        if in_slices
                        else f"parameters.{pspec.name}"
                    )
                    subject = f"'{pspec.name}'"
                    fix = f"set {pspec.name} under [parameters], e.g. {pspec.name} = 0.5"
                else:
                    target = f"models.{model}.parameters.{pspec.name}"
                    if in_slices:
                        index = next(j for j, s in enumerate(slice_.sources) if s.model == model)
                        target = f"{where}.sources.{index}.parameters.{pspec.name}"
                    subject = f"'{pspec.name}' for model '{model}'"
                    fix = (
                        f"set {pspec.name} under [models.{model}.parameters], or once for every "
                        "model under [parameters]"
                    )
                if not any(_sets(v) for v in values):
                    found.append(("error", target, f"missing required parameter {subject}", fix))
                elif not any(_covers_everything(v) for v in values):
                    filters = sorted({f for v in values for f in _filters(v)})
                    found.append(
                        (
                            "warning",
                            target,
                            f"{subject} is only set for tensors matching "
                            + ", ".join(f"'{f}'" for f in filters)
                            + "; others (embeddings, norms, head) get no value and the merge stops",
                            "add a last entry without a filter, e.g. { value = 0.5 }",
                        )
                    )
    return found


# ----------------------------------------------------------------------------------------------
# Files and checkpoints


def _used_models(recipe: Recipe) -> list[str]:
    if recipe.slices is None:
        return list(recipe.models)
    used = [source.model for s in recipe.slices for source in s.sources]
    used += [s.base for s in recipe.slices if s.base] + ([recipe.base] if recipe.base else [])
    return [name for name in dict.fromkeys(used) if name in recipe.models]


def _check_paths(problems: _Problems, folder: Path, *, hub_cache: bool) -> dict[str, Path]:
    """Find each model on disk; a missing local folder is an error, an uncached Hub id a warning.

    Without `hub_cache` a Hub id is left alone: whether it is cached says nothing about the recipe.
    """
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id
    from mergetui.recipe.paths import local_model_path

    located: dict[str, Path] = {}
    for name, entry in problems.recipe.models.items():
        source = entry.source.strip()
        if not source:
            continue
        where = f"models.{name}.source"
        candidate = local_model_path(source, folder)  # beside the recipe, else from the cwd
        if candidate.is_dir():
            located[name] = candidate
        elif candidate.exists():
            problems.error(
                where,
                f"'{source}' is a file, not a checkpoint folder",
                f"point at the folder that holds it: {candidate.parent}",
            )
        elif not looks_like_hub_id(source):
            problems.error(
                where,
                f"model folder not found: {candidate}",
                f"check the path (relative paths start from {folder})",
            )
        elif hub_cache:
            found = find_local(source, entry.revision)
            if found is not None:
                located[name] = found
            else:
                problems.warning(
                    where,
                    f"'{entry.reference}' is not in the local Hugging Face cache",
                    "it is downloaded when merging; checks that need its files were skipped",
                )
    return located


def _comparable(checkpoint: Checkpoint, depth: int) -> dict[str, str]:
    """Tensor names outside the layer stack or in its first `depth` layers (name -> name).

    Models of different depths (layer stacks) are compared over the layers they share.
    """
    from mergetui.checkpoints.layers import layer_index

    result: dict[str, str] = {}
    for name in checkpoint.tensors:
        index = layer_index(name)
        if index is None or index < depth:
            result[name] = name
    return result


def _check_checkpoints(
    problems: _Problems, spec: MethodSpec | None, located: dict[str, Path]
) -> bool:
    """Open the located checkpoints and check they can be merged as the recipe says.

    Returns True when every used model was read and the per-tensor parameter check ran (so the
    recipe-only guesses about parameter coverage are not needed).
    """
    from mergetui.checkpoints.compat import (
        MIXED_ARCHITECTURES_FLAG,
        describe_architecture,
        same_architecture,
    )
    from mergetui.checkpoints.inspect import open_checkpoint

    recipe = problems.recipe
    used = _used_models(recipe)
    checkpoints: dict[str, Checkpoint] = {}
    for name in used:
        if name not in located:
            continue
        try:
            checkpoints[name] = open_checkpoint(located[name])
        except UserError as exc:
            problems.error(f"models.{name}.source", f"cannot read '{name}': {exc}", exc.fix)
    if not checkpoints:
        return False

    reference = recipe.base if recipe.base in checkpoints else next(iter(checkpoints))
    ref = checkpoints[reference]
    comparable = {reference: ref}
    for name, checkpoint in checkpoints.items():
        if name == reference:
            continue
        if not same_architecture(ref, checkpoint):
            problems.error(
                f"models.{name}.source",
                f"'{name}' is a {describe_architecture(checkpoint)} but '{reference}' is a "
                f"{describe_architecture(ref)}: different architectures",
                "merge checkpoints of one architecture (mergekit refuses to mix them too), or "
                f"merge with {MIXED_ARCHITECTURES_FLAG} (mergekit: --allow-crimes)",
            )
            continue
        comparable[name] = checkpoint
    _compare_tensors(problems, reference, comparable)
    layer_ok = _check_layers(problems, checkpoints)

    complete = (
        spec is not None
        and layer_ok
        and len(comparable) == len(checkpoints) == len(used)
        and _plannable(recipe, checkpoints)
    )
    if not complete:
        return False
    assert spec is not None
    _check_every_tensor(problems, spec, checkpoints)
    return True


def _compare_tensors(
    problems: _Problems, reference: str, checkpoints: dict[str, Checkpoint]
) -> None:
    from mergetui.checkpoints.layers import block_kind

    recipe = problems.recipe
    vocab_aligned = recipe.tokenizer_source is not None or recipe.tokenizer is not None
    for name, checkpoint in checkpoints.items():
        if name == reference:
            continue
        depth = min(len(checkpoint.layers), len(checkpoints[reference].layers))
        ref_names = _comparable(checkpoints[reference], depth)
        names = _comparable(checkpoint, depth)
        for lacking, having, keys, other in (
            (name, reference, sorted(set(ref_names) - set(names)), ref_names),
            (reference, name, sorted(set(names) - set(ref_names)), names),
        ):
            if not keys:
                continue
            lacking_checkpoint = checkpoints[lacking]
            tied_only = all(block_kind(k) == "head" for k in keys) and lacking_checkpoint.tied
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            if tied_only:
                problems.warning(
                    f"models.{lacking}.source",
                    f"'{lacking}' has no {other[keys[0]]} (its embeddings are tied) but '{having}' has one",
                    "fine for mergekit, which uses the embeddings in its place; check the output ties too",
                )
            else:
                problems.error(
                    f"models.{lacking}.source",
                    f"'{lacking}' has no tensor {other[keys[0]]}{more}, which '{having}' has",
                    "merge checkpoints with the same tensors (same architecture and options)",
                )
        mismatched: dict[bool, list[tuple[str, tuple, tuple]]] = {True: [], False: []}
        for key in sorted(set(ref_names) & set(names)):
            shape_a = tuple(checkpoints[reference].tensors[ref_names[key]].shape)
            shape_b = tuple(checkpoint.tensors[names[key]].shape)
            if shape_a != shape_b:
                vocabulary = block_kind(key) in ("embedding", "head")
                mismatched[vocabulary].append((names[key], shape_a, shape_b))
        for vocabulary, found in mismatched.items():
            if not found or (vocabulary and vocab_aligned):
                continue
            tensor, shape_a, shape_b = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            problems.error(
                f"models.{name}.source",
                f"tensor {tensor} is {list(shape_b)} in '{name}' but {list(shape_a)} in "
                f"'{reference}'{more}",
                'set tokenizer_source = "union" (or "base") under [merge] to align the vocabularies'
                if vocabulary
                else "these checkpoints differ in size and cannot be merged",
            )


def _check_layers(problems: _Problems, checkpoints: dict[str, Checkpoint]) -> bool:
    recipe = problems.recipe
    ok = True
    if recipe.slices is None:
        depths = {name: c.num_layers for name, c in checkpoints.items()}
        if len(set(depths.values())) > 1:
            first = next(iter(depths))
            for name, depth in depths.items():
                if depth != depths[first]:
                    ok = False
                    problems.error(
                        f"models.{name}.source",
                        f"'{name}' has {depth} layers but '{first}' has {depths[first]}",
                        "merge models of the same depth, or use [[slices]] with equal-length layer ranges",
                    )
        return ok
    for i, slice_ in enumerate(recipe.slices):
        for j, source in enumerate(slice_.sources):
            checkpoint = checkpoints.get(source.model)
            if checkpoint is None:
                continue
            start, end = source.layer_range
            if end > checkpoint.num_layers:
                ok = False
                problems.error(
                    f"slices.{i}.sources.{j}.layers",
                    f"layers [{start}, {end}] go past the end of '{source.model}', which has "
                    f"{checkpoint.num_layers} layers",
                    f"use a range within [0, {checkpoint.num_layers}]",
                )
    return ok


def _plannable(recipe: Recipe, checkpoints: dict[str, Checkpoint]) -> bool:
    """Whether the layer plan can be walked: known models, sane and equal-length ranges."""
    if recipe.slices is None:
        return bool(recipe.models) and all(name in checkpoints for name in recipe.models)
    if not recipe.slices:
        return False
    for slice_ in recipe.slices:
        if not slice_.sources or len({s.num_layers for s in slice_.sources}) > 1:
            return False
        for source in slice_.sources:
            checkpoint = checkpoints.get(source.model)
            start, end = source.layer_range
            if checkpoint is None or not 0 <= start < end <= min(
                checkpoint.num_layers, len(checkpoint.layers)
            ):
                return False
    return True


def _check_every_tensor(
    problems: _Problems, spec: MethodSpec, checkpoints: dict[str, Checkpoint]
) -> None:
    """Resolve every parameter for every tensor the merge will visit, as the merge will.

    Finds required parameters that filters leave unset for some tensor, and (for DELLA) densities
    that epsilon pushes out of (0, 1).
    """
    from mergetui.checkpoints.layers import with_layer_index
    from mergetui.recipe.resolve import layer_t

    recipe = problems.recipe
    slices = recipe.effective_slices({name: c.num_layers for name, c in checkpoints.items()})
    if not slices or not all(s.sources for s in slices):
        return
    reported: set[tuple[str, str | None]] = set()

    def visit(slice_: Slice, output: str, inputs: list[tuple[str, str]], t: float) -> None:
        try:
            _shared, per_model = resolve_tensor_params(recipe, spec, slice_, output, inputs, t)
        except MissingParameterError as exc:
            key = (exc.param, exc.model)
            if key not in reported:
                reported.add(key)
                problems.error(exc.where, exc.message, exc.fix)
            return
        except ParameterValueError:
            return  # reported by the recipe checks
        if spec.epsilon_window:
            for model, values in per_model.items():
                density, epsilon = values.get("density"), values.get("epsilon")
                if density is None or epsilon is None or not 0 < density < 1:
                    continue
                if not window_fits(density, epsilon):
                    key = ("epsilon", model)
                    if key not in reported:
                        reported.add(key)
                        problems.error(
                            f"models.{model}.parameters.epsilon",
                            f"density {density:g} ± epsilon {epsilon:g} leaves (0, 1) for model "
                            f"'{model}' at {output}",
                            "choose epsilon < min(density, 1 - density)",
                        )

    first = checkpoints[slices[0].sources[0].model]
    for name in first.pre_layer:
        visit(slices[0], name, [(s.model, name) for s in slices[0].sources], 0)
    output_index = 0
    for slice_ in slices:
        lead = checkpoints[slice_.sources[0].model]
        count = slice_.num_layers
        for offset in range(count):
            layer = slice_.sources[0].layer_range[0] + offset
            if layer >= len(lead.layers):
                break
            for name in lead.layer_tensors(layer):
                inputs = [
                    (s.model, with_layer_index(name, s.layer_range[0] + offset))
                    for s in slice_.sources
                ]
                visit(slice_, with_layer_index(name, output_index), inputs, layer_t(offset, count))
            output_index += 1
    last = checkpoints[slices[-1].sources[0].model]
    for name in last.post_layer:
        visit(slices[-1], name, [(s.model, name) for s in slices[-1].sources], 0)
