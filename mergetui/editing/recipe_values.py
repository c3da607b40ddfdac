"""Where a grid column's values live in a recipe, and the forms an edited column is written in.

A column (a parameter, for one model or shared) can be given at several levels: the recipe, the
model entry, a slice, a slice's source. Reading gathers them all; writing goes to the most specific
place for one slice: an edited column becomes an explicit per-layer list for each slice it touches
(a list as long as the slice, which the gradient rule maps exactly onto its layers); a split column
becomes `[{filter="self_attn", value=[...]}, {filter="mlp", value=[...]}, {value=[...]}]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mergetui.editing.cells import ATTENTION, MLP, REST, SPLIT_GROUPS, GridError
from mergetui.editing.tensor_names import TensorNames
from mergetui.recipe.methods import ParamSpec
from mergetui.recipe.model import Conditional, Recipe

# The filters an edited split column writes (mergekit's usual spelling for Llama-family names).
DEFAULT_FILTERS: dict[str, str] = {ATTENTION: "self_attn", MLP: "mlp"}

ColumnKey = tuple[str, str | None]  # (parameter, model or None for a shared one)


def column_models(recipe: Recipe, param: ParamSpec) -> list[str]:
    """Models that get a column for a per-model parameter (the base only for scope `input`)."""
    names: list[str] = []
    if recipe.slices is None:
        names = list(recipe.models)
    else:
        for slice_ in recipe.slices:
            for source in slice_.sources:
                if source.model not in names:
                    names.append(source.model)
    if param.scope == "non_base":
        bases = {recipe.base} | {s.base for s in recipe.slices or () if s.base}
        names = [n for n in names if n not in bases]
    return names


def guess_layer_count(recipe: Recipe) -> int | None:
    """The longest per-layer list in the recipe: a saved grid column is as long as the stack."""
    longest = 0

    def visit(value: Any) -> None:
        nonlocal longest
        if isinstance(value, Conditional):
            visit(value.value)
        elif isinstance(value, list):
            if value and all(isinstance(v, Conditional) for v in value):
                for entry in value:
                    visit(entry.value)
            else:
                longest = max(longest, len(value))

    for params in _all_parameter_dicts(recipe):
        for value in params.values():
            visit(value)
    return longest or None


def _all_parameter_dicts(recipe: Recipe) -> Iterable[dict]:
    yield recipe.parameters
    for entry in recipe.models.values():
        yield entry.parameters
    for slice_ in recipe.slices or ():
        yield slice_.parameters
        for source in slice_.sources:
            yield source.parameters


def conditionals(value: Any) -> list[Conditional]:
    """The filter entries of a parameter value (empty for a plain number or list)."""
    if isinstance(value, Conditional):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, Conditional) for v in value):
        return list(value)
    return []


def value_sources(recipe: Recipe, param: str, model: str | None) -> list[Any]:
    """Every value the recipe holds for this parameter at any level that can reach the column."""
    found: list[Any] = []
    dicts: list[dict] = [recipe.parameters]
    if model is not None and model in recipe.models:
        dicts.append(recipe.models[model].parameters)
    for slice_ in recipe.slices or ():
        dicts.append(slice_.parameters)
        for source in slice_.sources:
            if model is not None and source.model == model:
                dicts.append(source.parameters)
    for params in dicts:
        if param in params:
            found.append(params[param])
    return found


def read_only_reason(
    recipe: Recipe, names: TensorNames, param: str, model: str | None
) -> str | None:
    """Columns whose filters cut across the attention / mlp / rest groups are left to the file."""
    layer_names = names.all_layer_names()
    groups = {
        ATTENTION: set(names.attention),
        MLP: set(names.mlp),
    }
    outside = {names.embed, names.head}
    for value in value_sources(recipe, param, model):
        for entry in conditionals(value):
            if entry.filter is None:
                continue
            matched = {n for n in layer_names if entry.filter in n}
            if any(entry.filter in n for n in outside) or matched not in groups.values():
                return (
                    f"filter {entry.filter!r} does not split layers into attention / mlp / rest; "
                    "edit this parameter in the recipe file"
                )
    return None


def write_filters(recipe: Recipe, names: TensorNames, key: ColumnKey) -> dict[str, str]:
    """Keep the recipe's own spelling of the group filters (e.g. `attn` for GPT-2 names)."""
    filters = dict(DEFAULT_FILTERS)
    for value in value_sources(recipe, *key):
        for entry in conditionals(value):
            if entry.filter is None:
                continue
            if all(entry.filter in n for n in names.attention):
                filters[ATTENTION] = entry.filter
            elif all(entry.filter in n for n in names.mlp):
                filters[MLP] = entry.filter
    return filters


def column_value(
    lists: Mapping[str, Sequence[float | None]], filters: Mapping[str, str]
) -> Any | None:
    """The value a column takes over one slice: one list when its groups agree, else a filter
    entry per group that has values (None when no group has any)."""
    present = {g: v for g, v in lists.items() if any(x is not None for x in v)}
    if not present:
        return None
    if len(present) == 3 and lists[ATTENTION] == lists[MLP] == lists[REST]:
        return list(lists[REST])
    return [
        Conditional(value=list(present[g]), filter=filters.get(g))
        for g in SPLIT_GROUPS
        if g in present
    ]


def target_parameters(recipe: Recipe, key: ColumnKey, slice_index: int) -> dict:
    """The most specific place in the recipe for a column's values over one slice."""
    param, model = key
    if recipe.slices is None:
        if model is None:
            return recipe.parameters
        return recipe.models[model].parameters
    slice_ = recipe.slices[slice_index]
    if model is None:
        return slice_.parameters
    for source in slice_.sources:
        if source.model == model:
            return source.parameters
    raise GridError(f"{model} is not an input of slice {slice_index + 1}")


def fill_gaps(values: list[float | None]) -> list[float | None]:
    """Give cells without a value the nearest value in the column (a list cannot have holes)."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known or len(known) == len(values):
        return values
    return [
        v if v is not None else values[min(known, key=lambda k: abs(k - i))]
        for i, v in enumerate(values)
    ]
