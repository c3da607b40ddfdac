"""The validator's parameter checks: each setting's name, scope, type and range, and whether every
required parameter is set for every model that needs it (judged from the recipe alone).

Values are coerced as mergekit's pydantic does (`resolve.coerce`); ranges come from the method's
`ParamSpec`s. With checkpoints, `validate_models` resolves every tensor's parameters exactly
instead of guessing coverage from the recipe.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from mergetui.recipe.limits import MAX_PARAMETER
from mergetui.recipe.methods import MethodSpec, ParamSpec
from mergetui.recipe.model import Conditional, Parameters, ParamValue, Recipe, Slice
from mergetui.recipe.problems import Level, Problems
from mergetui.recipe.reader import did_you_mean
from mergetui.recipe.resolve import ParameterValueError, coerce
from mergetui.recipe.walk import input_groups


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


def check_parameters(problems: Problems, spec: MethodSpec) -> None:
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


def _check_values(problems: Problems, pspec: ParamSpec, value: ParamValue, where: str) -> None:
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


def required_coverage(recipe: Recipe, spec: MethodSpec) -> list[tuple[Level, str, str, str]]:
    """Required parameters left unset, judged from the recipe alone.

    Without checkpoints the tensor names are unknown, so a setting made only of filters is a
    warning (some tensors may get no value); with checkpoints `_check_checkpoints` decides exactly.
    """
    found: list[tuple[Level, str, str, str]] = []
    in_slices = recipe.slices is not None
    for where, inputs, base in input_groups(recipe):
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
