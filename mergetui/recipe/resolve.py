"""Which value each parameter takes for each tensor: mergekit 0.1.5's resolution, step for step.

Mirrors `mergekit.config.evaluate_setting`, `mergekit.parameter_resolver` and the parts of
`mergekit.plan` that choose `t` and the slice. The merge engine calls `resolve_tensor_params` for
every output tensor and the grid calls `resolve_layer_values`, so both show the same numbers.

- Settings are looked up from the highest level down: slice source (in the `models:` form, the
  model's own parameters), then slice, then top level, then the method's default. A setting that
  evaluates to None (no filter matched, an empty list) falls through to the next level.
- A list of plain values is a gradient over the output slice: layer i of n has t = i/(n-1) (1 when
  n == 1); numbers interpolate between neighbouring anchors, booleans and strings take the anchor at
  int(t*(N-1)). Embeddings use the first slice and the final norm/head the last, both with t = 0.
- Values are coerced to the parameter's type the way mergekit's pydantic (lax mode) does.
- Shared parameters match filters against the output tensor name, per-model ones against each
  input's own tensor name (which differs in layer stacks).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe.methods import METHODS, MethodSpec, ParamSpec, ParamType
from mergetui.recipe.model import Conditional, Parameters, ParamValue, Recipe, Slice

_FROM_RECIPE: Any = object()

_FLOAT_RE = re.compile(
    r"^[+-]?(?:(?:\d+(?:_\d+)*)?\.\d+(?:_\d+)*|\d+(?:_\d+)*\.?)(?:[eE][+-]?\d+)?$"
    r"|^[+-]?(?:inf|infinity|nan)$",
    re.IGNORECASE,
)
_INT_RE = re.compile(r"^[+-]?\d+(?:_\d+)*$")
_INT_FLOAT_RE = re.compile(r"^[+-]?\d+(?:_\d+)*\.0+$")
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


class ParameterValueError(UserError):
    """A parameter value that does not fit its type (mergekit's pydantic would reject it too)."""


def _bad(value: Any, what: str) -> ParameterValueError:
    return ParameterValueError(
        f"{value!r} is not {what}", fix=f"write {what} (mergekit would reject it too)"
    )


def coerce(value: Any, ptype: ParamType | ParamSpec) -> Any:
    """Validate and convert one value as pydantic's lax mode does for float, int and bool.

    Strings are parsed (YAML hands mergekit "1e-5" as a string); an int becomes a float for float
    parameters; a float with a fraction is no int. Raises ParameterValueError otherwise.
    """
    nullable = False
    if isinstance(ptype, ParamSpec):
        nullable = ptype.nullable
        ptype = ptype.type
    if value is None:
        if nullable:
            return None
        raise _bad(value, _WHAT[ptype])
    if ptype == "float":
        return _to_float(value)
    if ptype == "int":
        return _to_int(value)
    if ptype == "bool":
        return _to_bool(value)
    raise ValueError(f"unknown parameter type {ptype!r}")


_WHAT = {"float": "a number", "int": "a whole number", "bool": "true or false"}


def _to_float(value: Any) -> float:
    try:
        if isinstance(value, (bool, int, float)):
            return float(value)
        if isinstance(value, str):
            text = value.strip()
            if _FLOAT_RE.match(text):
                return float(text)
    except OverflowError:  # an integer beyond float's range (pydantic refuses it too)
        pass
    raise _bad(value, "a number")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise _bad(value, "a whole number")
    if isinstance(value, str):
        text = value.strip()
        try:
            if _INT_RE.match(text):
                return int(text)
            if _INT_FLOAT_RE.match(text):
                return int(text.split(".")[0])
        except ValueError:  # more digits than int() reads
            pass
    raise _bad(value, "a whole number")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if value == 0:
            return False
        if value == 1:
            return True
    elif isinstance(value, str):
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _bad(value, "true or false")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def evaluate(
    value: ParamValue, tensor_name: str, t: float, ptype: ParamType | ParamSpec
) -> Any | None:
    """One setting's value for a tensor at gradient position t, or None when nothing applies.

    Same steps as mergekit's `evaluate_setting`: scalars are coerced; gradients interpolate numbers
    (`(1 - frac) * v[i0] + frac * v[i1]`, in that order, for identical rounding); a list of
    {filter, value} entries returns the first whose filter is None, "*" or a substring of the name.
    """
    if isinstance(value, Conditional):
        value = [value]
    if _is_scalar(value):
        return coerce(value, ptype)
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        if _is_scalar(value[0]):
            return _gradient(value, t, ptype)
        for entry in value:
            if not isinstance(entry, Conditional):
                raise ParameterValueError(
                    f"{entry!r} mixed into a list of {{filter, value}} entries",
                    fix="use either plain values or {filter, value} entries in one list",
                )
            if (
                entry.filter is None
                or entry.filter == "*"
                or (tensor_name and entry.filter in tensor_name)
            ):
                return evaluate(entry.value, tensor_name, t, ptype)
        return None
    raise ParameterValueError(f"unexpected parameter value {value!r}")


# Anchor types that need no coercion: a gradient made only of these is valid as it is.
_PLAIN = {"float": frozenset({int, float}), "int": frozenset({int}), "bool": frozenset({bool})}


def _gradient(values: Sequence[Any], t: float, ptype: ParamType | ParamSpec) -> Any:
    """A gradient's value at t, as mergekit's `evaluate_setting` gives it.

    mergekit coerces every anchor on every call; the engine and the validator ask once per tensor,
    so that would cost tensors x anchors. The same checks run here at C speed when every anchor is
    already of the parameter's type (the usual case); only the anchors read are then coerced.
    """
    kind = ptype.type if isinstance(ptype, ParamSpec) else ptype
    if not _plain(values, kind):
        for value in values:  # strings, booleans for numbers...: any invalid anchor fails
            coerce(value, ptype)
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    if kind == "bool":
        return coerce(values[i0], ptype)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    low, high = coerce(values[i0], ptype), coerce(values[i1], ptype)
    return coerce((1 - frac) * low + frac * high, ptype)


def _plain(values: Sequence[Any], kind: ParamType) -> bool:
    """Whether every anchor is valid as it is (checked at C speed, without a loop in Python)."""
    types = set(map(type, values))
    if not types <= _PLAIN[kind]:
        return False
    if kind == "float" and int in types:
        try:
            list(map(float, values))
        except OverflowError:  # an integer beyond float's range is no number
            return False
    return True


def layer_t(index: int, count: int) -> float:
    """Gradient position of layer `index` in an output slice of `count` layers."""
    return index / (count - 1) if count > 1 else 1


@dataclass(frozen=True)
class SettingLevel:
    """One level of settings to search, and the recipe path it was written at (for messages)."""

    path: str
    parameters: Parameters


def _slice_path(recipe: Recipe, slice_: Slice) -> str | None:
    for index, candidate in enumerate(recipe.slices or []):
        if candidate is slice_:
            return f"slices.{index}"
    return None


def setting_levels(recipe: Recipe, slice_: Slice, model: str | None) -> list[SettingLevel]:
    """Where a parameter is looked up, highest precedence first (mergekit's `parameter_sources`).

    With `model` None these are the levels of shared parameters (slice, then top level); with a
    model, that model's slice sources come first. In the `models:` form the slice is synthesised by
    `Recipe.effective_slices` and its sources carry the models' own parameters.
    """
    levels: list[SettingLevel] = []
    slice_path = _slice_path(recipe, slice_)
    if model is not None:
        for index, source in enumerate(slice_.sources):
            if source.model == model:
                path = (
                    f"{slice_path}.sources.{index}.parameters"
                    if slice_path is not None
                    else f"models.{model}.parameters"
                )
                levels.append(SettingLevel(path, source.parameters))
    levels.append(
        SettingLevel(
            f"{slice_path}.parameters" if slice_path else "slice.parameters", slice_.parameters
        )
    )
    levels.append(SettingLevel("parameters", recipe.parameters))
    return levels


class MissingParameterError(UserError):
    """A required parameter that no level sets for some tensor (mergekit stops there too)."""

    def __init__(
        self, message: str, *, param: str, model: str | None, where: str, fix: str
    ) -> None:
        super().__init__(message, where=where, fix=fix)
        self.param = param
        self.model = model


def resolve_parameter(
    spec: ParamSpec,
    levels: Sequence[SettingLevel],
    tensor_name: str,
    t: float,
    model: str | None = None,
) -> Any:
    """The first level whose setting evaluates to a value, else the default (or an error)."""
    for level in levels:
        if spec.name in level.parameters:
            try:
                value = evaluate(level.parameters[spec.name], tensor_name, t, spec)
            except ParameterValueError as exc:
                raise ParameterValueError(
                    f"{spec.name}: {exc.message}", where=f"{level.path}.{spec.name}", fix=exc.fix
                ) from None
            if value is not None:
                return value
    if spec.required:
        subject = f"model '{model}', tensor {tensor_name}" if model else f"tensor {tensor_name}"
        # Point at the most specific level that exists in the recipe (not a synthesised slice).
        first = next((lv.path for lv in levels if not lv.path.startswith("slice.")), "parameters")
        scope = f"[models.{model}.parameters] or " if model else ""
        raise MissingParameterError(
            f"missing required parameter '{spec.name}' for {subject}",
            param=spec.name,
            model=model,
            where=f"{first}.{spec.name}",
            fix=f"set {spec.name} in {scope}[parameters] with a value that covers this tensor",
        )
    return coerce(spec.default, spec)


def resolve_tensor_params(
    recipe: Recipe,
    spec: MethodSpec,
    slice_: Slice,
    tensor_name: str,
    inputs: Sequence[tuple[str, str]],
    t: float,
    base: str | None = _FROM_RECIPE,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parameters for one output tensor: (shared values, values per input model).

    `inputs` lists (model name, that model's tensor name) in input order; `base` defaults to the
    slice's base, else the recipe's. The base gets only `input`-scoped per-model parameters, as in
    mergekit (`non_base` ones such as a task-vector weight do not apply to it).
    """
    if base is _FROM_RECIPE:
        base = slice_.base or recipe.base
    shared_levels = setting_levels(recipe, slice_, None)
    shared = {
        p.name: resolve_parameter(p, shared_levels, tensor_name, t) for p in spec.shared_params
    }
    per_model: dict[str, dict[str, Any]] = {}
    for model, input_name in dict(inputs).items():
        levels = setting_levels(recipe, slice_, model)
        per_model[model] = {
            p.name: resolve_parameter(p, levels, input_name, t, model)
            for p in spec.per_model_params
            if model != base or p.scope == "input"
        }
    return shared, per_model


@dataclass
class LayerValues:
    """One parameter's value down the output model, as the merge will use it.

    None where it does not apply: a model that is not an input of that slice, the base for a
    parameter it does not take, or a required parameter left unset there (the merge would stop).
    """

    embed: Any
    layers: list[Any]
    head: Any


def resolve_layer_values(
    recipe: Recipe,
    layer_counts: Mapping[str, int],
    param: str,
    model: str | None,
    tensor_name_template: str,
    *,
    pre_tensor: str = "model.embed_tokens.weight",
    post_tensor: str = "lm_head.weight",
) -> LayerValues:
    """Values of `param` (for `model`, or shared when None) for one representative tensor per layer.

    `tensor_name_template` names a layer tensor with `{i}` for the layer index, e.g.
    "model.layers.{i}.self_attn.q_proj.weight": shared parameters see the output layer's name,
    per-model ones the input layer's (as in mergekit). Embeddings use the first slice and the head
    the last, both at t = 0.
    """
    method = METHODS.get(recipe.method)
    if method is None:
        raise UserError(f"unknown merge method '{recipe.method}'", where="merge.method")
    spec = method.param(param)
    if spec is None:
        raise UserError(f"{recipe.method} has no parameter '{param}'", where=f"parameters.{param}")
    if spec.scope != "shared" and model is None:
        raise ValueError(f"{param} is per model: name the model")
    slices = recipe.effective_slices(layer_counts)

    def value(slice_: Slice, output_name: str, input_names: dict[str, str], t: float) -> Any:
        try:
            if spec.scope == "shared":
                return resolve_parameter(spec, setting_levels(recipe, slice_, None), output_name, t)
            if model not in input_names:
                return None
            base = slice_.base or recipe.base
            if model == base and spec.scope == "non_base":
                return None
            levels = setting_levels(recipe, slice_, model)
            return resolve_parameter(spec, levels, input_names[model], t, model)
        except MissingParameterError:
            return None

    layers: list[Any] = []
    for slice_ in slices:
        count = slice_.num_layers
        for offset in range(count):
            input_names = {
                source.model: tensor_name_template.format(i=source.layer_range[0] + offset)
                for source in slice_.sources
            }
            output_name = tensor_name_template.format(i=len(layers))
            layers.append(value(slice_, output_name, input_names, layer_t(offset, count)))
    embed = head = None
    if slices:
        first, last = slices[0], slices[-1]
        embed = value(first, pre_tensor, {s.model: pre_tensor for s in first.sources}, 0)
        head = value(last, post_tensor, {s.model: post_tensor for s in last.sources}, 0)
    return LayerValues(embed=embed, layers=layers, head=head)
